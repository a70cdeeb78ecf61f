//! `microhost:platform/events`: publishing. An event goes into the invocation's unit of
//! work and reaches its topic's log only if the invocation succeeds. A service may
//! publish only to the topics its manifest entry lists in `publishes`.

use super::InvocationState;
use super::generated::microhost::platform::{events, types};
use crate::bus::envelope::Envelope;
use crate::bus::unit::UnitOfWork;
use std::collections::BTreeSet;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker};

/// Largest payload of one event.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// Most events one invocation may publish.
pub const MAX_EVENTS_PER_INVOCATION: usize = 1000;

/// Who publishes, and where it may.
pub struct Publisher {
    /// `service@version`, the events' `source`.
    pub source: String,
    pub service: String,
    pub allowed: Arc<BTreeSet<String>>,
    /// Trace context of the invocation, passed on to the events it publishes.
    pub traceparent: Option<String>,
}

pub struct EventsView<'a> {
    publisher: &'a Publisher,
    unit: &'a mut UnitOfWork,
}

struct HasEvents;

impl HasData for HasEvents {
    type Data<'a> = EventsView<'a>;
}

pub fn add_to_linker(linker: &mut Linker<InvocationState>) -> wasmtime::Result<()> {
    events::add_to_linker::<_, HasEvents>(linker, |s: &mut InvocationState| EventsView {
        publisher: &s.publisher,
        unit: &mut s.unit,
    })?;
    types::add_to_linker::<_, HasEvents>(linker, |s: &mut InvocationState| EventsView {
        publisher: &s.publisher,
        unit: &mut s.unit,
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
        if !p.allowed.contains(&topic) {
            return Ok(Err(events::PublishError::UndeclaredTopic(format!(
                "service {:?} may not publish to topic {topic:?}: it is not in the manifest's `publishes`",
                p.service
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
        let mut event = Envelope::new(p.source.clone(), topic, data);
        event.key = options.key;
        event.datacontenttype = options.content_type;
        event.traceparent = p.traceparent.clone();
        let id = event.id.clone();
        self.unit.events.push(event);
        Ok(Ok(id))
    }
}
