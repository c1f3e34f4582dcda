//! Bencode: arbitrary bytes never panic; whatever decodes re-encodes canonically to a value that
//! decodes to the same thing.
#![no_main]

use hyperblow_core::bencode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((value, used)) = bencode::decode_prefix(data) {
        assert!(used <= data.len());
        assert_eq!(value.raw(), &data[..used]);
    }
    if let Ok(value) = bencode::decode(data) {
        let canonical = value.encode_canonical();
        let again = bencode::decode(&canonical).expect("canonical encoding decodes");
        assert_eq!(again.to_owned_value(), value.to_owned_value());
        assert_eq!(again.encode_canonical(), canonical);
    }
});
