//! `microhost:platform/events`: publishing. An event goes into the invocation's unit of
//! work and reaches its topic's log only if the invocation succeeds. A service may
//! publish only to the topics its manifest entry lists in `publishes`.

use super::generated::microhost::platform::{events, types};
use super::{InvocationState, RequestContext};
use crate::bus::envelope::Envelope;
use crate::bus::unit::UnitOfWork;
use crate::config::ServiceSpec;
use std::collections::BTreeSet;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker};

/// Largest payload of one event.
pub(crate) const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// Most events one invocation may publish.
pub(crate) const MAX_EVENTS_PER_INVOCATION: usize = 1000;

/// Where a service may publish (its manifest's `publishes`), built once per service.
#[derive(Clone)]
pub(crate) struct EventsGrant {
    service: String,
    allowed: Arc<BTreeSet<String>>,
    /// Bytes of payloads one invocation may publish (`limits.event_kib`).
    max_bytes: usize,
}

impl EventsGrant {
    pub(crate) fn new(spec: &ServiceSpec) -> EventsGrant {
        EventsGrant {
            service: spec.name.to_string(),
            allowed: Arc::new(spec.publishes.iter().map(ToString::to_string).collect()),
            max_bytes: spec.limits.event_bytes(),
        }
    }

    /// The publisher of one invocation serving `request`.
    pub(crate) fn publisher(&self, request: &RequestContext) -> Publisher {
        Publisher {
            source: format!("{}@{}", self.service, request.version),
            grant: self.clone(),
            traceparent: request.traceparent.clone(),
            tracer: request.tracer.clone(),
        }
    }
}

/// Who publishes, and where it may.
pub(crate) struct Publisher {
    grant: EventsGrant,
    /// `service@version`, the events' `source`.
    source: String,
    /// Trace context of the invocation, passed on to the events it publishes.
    traceparent: Option<String>,
    tracer: crate::telemetry::Tracer,
}

pub(crate) struct EventsView<'a> {
    publisher: &'a Publisher,
    unit: &'a mut UnitOfWork,
}

struct HasEvents;

impl HasData for HasEvents {
    type Data<'a> = EventsView<'a>;
}

pub(crate) fn add_to_linker(linker: &mut Linker<InvocationState>) -> wasmtime::Result<()> {
    events::add_to_linker::<_, HasEvents>(linker, |s: &mut InvocationState| EventsView {
        publisher: &s.granted.events,
        unit: &mut s.granted.unit,
    })?;
    types::add_to_linker::<_, HasEvents>(linker, |s: &mut InvocationState| EventsView {
        publisher: &s.granted.events,
        unit: &mut s.granted.unit,
    })
}

impl types::Host for EventsView<'_> {}

impl events::Host for EventsView<'_> {
    fn publish(
        &mut self,
        topic: String,
        data: Vec<u8>,
        options: events::PublishOptions,
    ) -> wasmtime::Result<Result<String, events::PublishError>> {
        let p = self.publisher;
        if !p.grant.allowed.contains(&topic) {
            return Ok(Err(events::PublishError::UndeclaredTopic(format!(
                "service {:?} may not publish to topic {topic:?}: it is not in the manifest's `publishes`",
                p.grant.service
            ))));
        }
        if data.len() > MAX_EVENT_BYTES {
            return Ok(Err(events::PublishError::Invalid(format!(
                "event of {} bytes is over the limit of {MAX_EVENT_BYTES} bytes",
                data.len()
            ))));
        }
        if self.unit.events.len() >= MAX_EVENTS_PER_INVOCATION {
            return Ok(Err(events::PublishError::Invalid(format!(
                "one invocation may publish at most {MAX_EVENTS_PER_INVOCATION} events"
            ))));
        }
        let bytes = self.unit.event_bytes + data.len();
        if bytes > p.grant.max_bytes {
            tracing::warn!(service = %p.grant.service, bytes, budget = p.grant.max_bytes, "event budget spent");
            return Ok(Err(events::PublishError::Invalid(format!(
                "one invocation may publish at most {} KiB of events (the service's \
                 `limits.event_kib`); this one would make it {} KiB",
                p.grant.max_bytes / 1024,
                bytes.div_ceil(1024)
            ))));
        }
        self.unit.event_bytes = bytes;
        let mut event = Envelope::new(p.source.clone(), topic, data);
        event.key = options.key;
        event.datacontenttype = options.content_type;
        // The event carries the publish span's context: its deliveries are its children.
        let mut span = p.tracer.child(
            || format!("publish {}", event.topic),
            opentelemetry::trace::SpanKind::Producer,
            p.traceparent.as_deref(),
        );
        if span.is_recording() {
            span.set("messaging.system", "microhost");
            span.set("messaging.destination.name", event.topic.clone());
            span.set("messaging.message.id", event.id.clone());
        }
        event.traceparent = span.traceparent().map(str::to_string);
        let id = event.id.clone();
        self.unit.events.push(event);
        Ok(Ok(id))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_spec::spec;
    use super::events::Host as _;
    use super::*;

    fn options(key: &str) -> events::PublishOptions {
        events::PublishOptions {
            key: Some(key.to_string()),
            content_type: Some("application/json".to_string()),
        }
    }

    #[test]
    fn publishes_only_to_granted_topics_and_only_into_the_unit() -> anyhow::Result<()> {
        let grant = EventsGrant::new(&spec(r#"publishes = ["order.created"]"#));
        let request = RequestContext {
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            ..RequestContext::new("v2")
        };
        let publisher = grant.publisher(&request);
        let mut unit = UnitOfWork::new("orders");
        let mut view = EventsView {
            publisher: &publisher,
            unit: &mut unit,
        };
        let id = view
            .publish("order.created".into(), b"{}".to_vec(), options("o-1"))?
            .map_err(|e| anyhow::anyhow!("refused: {e:?}"))?;
        match view.publish("billing.paid".into(), b"{}".to_vec(), options("o-1"))? {
            Err(events::PublishError::UndeclaredTopic(why)) => assert!(
                why.contains("\"orders\" may not publish to topic \"billing.paid\""),
                "{why}"
            ),
            other => panic!("an undeclared topic: {other:?}"),
        }
        let big = vec![0; MAX_EVENT_BYTES + 1];
        assert!(matches!(
            view.publish("order.created".into(), big, options("o-2"))?,
            Err(events::PublishError::Invalid(_))
        ));
        // Only the accepted event is buffered, stamped with source and trace context.
        assert_eq!(unit.events.len(), 1);
        let event = &unit.events[0];
        assert_eq!(event.id, id);
        assert_eq!(event.source, "orders@v2");
        assert_eq!(event.topic, "order.created");
        assert_eq!(event.key.as_deref(), Some("o-1"));
        assert_eq!(event.traceparent, request.traceparent);
        Ok(())
    }

    #[test]
    fn one_invocation_publishes_a_bounded_number_of_bytes() -> anyhow::Result<()> {
        let grant = EventsGrant::new(&spec("publishes = [\"t\"]\nlimits = { event_kib = 2048 }"));
        let publisher = grant.publisher(&RequestContext::new("v1"));
        let mut unit = UnitOfWork::new("orders");
        let mut view = EventsView {
            publisher: &publisher,
            unit: &mut unit,
        };
        let mib = vec![0; 1024 * 1024];
        assert!(view.publish("t".into(), mib.clone(), options("1"))?.is_ok());
        assert!(view.publish("t".into(), mib.clone(), options("2"))?.is_ok());
        match view.publish("t".into(), mib, options("3"))? {
            Err(events::PublishError::Invalid(why)) => {
                assert!(why.contains("`limits.event_kib`"), "{why}")
            }
            other => panic!("over the budget: {other:?}"),
        }
        assert_eq!((unit.events.len(), unit.event_bytes), (2, 2 * 1024 * 1024));
        Ok(())
    }

    #[test]
    fn one_invocation_publishes_a_bounded_number_of_events() -> anyhow::Result<()> {
        let grant = EventsGrant::new(&spec(r#"publishes = ["t"]"#));
        let publisher = grant.publisher(&RequestContext::new("v1"));
        let mut unit = UnitOfWork::new("orders");
        let mut view = EventsView {
            publisher: &publisher,
            unit: &mut unit,
        };
        for i in 0..MAX_EVENTS_PER_INVOCATION {
            assert!(
                view.publish("t".into(), vec![], options(&i.to_string()))?
                    .is_ok()
            );
        }
        assert!(matches!(
            view.publish("t".into(), vec![], options("over"))?,
            Err(events::PublishError::Invalid(why)) if why.contains("at most")
        ));
        Ok(())
    }
}
