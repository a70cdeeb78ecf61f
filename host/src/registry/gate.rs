//! The gates a version passes before it takes traffic: the contract gate (it exports
//! what the manifest routes to it) and the health gate (its `health` export, then the
//! smoke request).

use super::{Registry, RegistryError, ServiceSlot};
use crate::capability::RequestContext;
use crate::config::SubscriptionSpec;
use crate::runtime::{ComponentError, Prepared};
use bytes::Bytes;

/// The contract gate: a version must export what the manifest routes it to. (The HTTP
/// handler is checked for every component by the runtime.)
pub(super) fn check_contract(
    service: &str,
    subscriptions: &[SubscriptionSpec],
    prepared: &Prepared,
) -> Result<(), ComponentError> {
    if let Some(sub) = subscriptions.first()
        && !prepared.is_subscriber()
    {
        return Err(ComponentError::WrongWorld(format!(
            "service {service:?} subscribes to topic {:?}, but the component does not export \
             `{}`",
            sub.topic,
            crate::runtime::SUBSCRIBER
        )));
    }
    Ok(())
}

impl Registry {
    /// [`Registry::check`] as a refusal of the change that would route to the version.
    pub(super) async fn gate(
        &self,
        slot: &ServiceSlot,
        label: &str,
        prepared: &Prepared,
    ) -> Result<(), RegistryError> {
        self.check(slot, label, prepared)
            .await
            .map_err(|reason| RegistryError::Unhealthy {
                service: slot.name().to_string(),
                version: label.to_string(),
                reason,
            })
    }

    /// The health gate: the version's `health` export, then the smoke request. Neither
    /// commits anything.
    pub(crate) async fn check(
        &self,
        slot: &ServiceSlot,
        label: &str,
        prepared: &Prepared,
    ) -> Result<(), String> {
        let cx = RequestContext {
            caller: Some(self.caller.clone()),
            ..RequestContext::new(label)
        };
        match self.runtime.check_health(prepared, &slot.grants, &cx).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(format!("its health check answered: {why}")),
            Err(e) => return Err(format!("its health check failed: {e}")),
        }
        let Some(path) = &slot.spec.health.smoke else {
            return Ok(());
        };
        // Its instance is not kept for traffic: it ran with effects discarded.
        let prepared = &prepared.clone().with_own_warm_pool();
        let request = http::Request::builder()
            .method(http::Method::GET)
            .uri(path.as_str())
            .header(http::header::HOST, format!("{}.internal", slot.name()))
            .header("x-microhost-probe", "smoke")
            .body(Bytes::new())
            .map_err(|e| format!("the smoke request GET {path} is invalid: {e}"))?;
        match self
            .runtime
            .handle_http(prepared, &slot.grants, &cx, request)
            .await
        {
            // Stricter than a success in the outcome table: a redirect (to a login
            // page, say) is not the page the smoke path names.
            Ok((response, _discarded)) if response.status().is_success() => Ok(()),
            Ok((response, _)) => {
                let body = String::from_utf8_lossy(response.body());
                let excerpt: String = body.chars().take(200).collect();
                Err(format!(
                    "the smoke request GET {path} answered {}: {excerpt}",
                    response.status()
                ))
            }
            Err(e) => Err(format!("the smoke request GET {path} failed: {e}")),
        }
    }
}
