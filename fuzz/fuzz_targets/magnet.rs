//! Magnet links: arbitrary strings never panic; a parsed link formats to a URI that parses back to it.
#![no_main]

use hyperblow_core::magnet::{FileSelection, MagnetLink};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(link) = MagnetLink::parse(s) {
        let uri = link.to_uri();
        assert_eq!(MagnetLink::parse(&uri), Ok(link), "{uri}");
    }
    if let Ok(sel) = FileSelection::parse(s) {
        assert_eq!(FileSelection::parse(&sel.to_string()), Ok(sel));
    }
});
