//! Event envelope decoding on any bytes (a corrupt log entry): never a panic, and an
//! event that decodes encodes to bytes that decode to the same event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use microhost::fuzzing::Event;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = Event::decode(data) {
        let again = Event::decode(&event.encode()).expect("an encoded event decodes");
        assert_eq!(again, event);
    }
});
