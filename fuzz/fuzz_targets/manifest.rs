//! The manifest parser and validator on any text: never a panic; a refusal names the
//! file; an accepted manifest's routes are plain path prefixes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use microhost::config::Manifest;
use std::path::{Path, PathBuf};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Manifest::from_toml(text, Path::new("fuzz.toml"), PathBuf::from("/fuzz")) {
        Ok(manifest) => {
            for service in &manifest.services {
                assert!(service.route.starts_with('/'), "route {:?}", service.route);
                let _ = manifest.component_path(service);
            }
        }
        Err(error) => {
            let message = error.to_string();
            assert!(message.contains("fuzz.toml"), "{message}");
        }
    }
});
