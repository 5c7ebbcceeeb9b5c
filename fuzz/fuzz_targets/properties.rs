//! Any bytes as an MQTT 5 property list: parsing never panics, `find` and `first` agree
//! with `parse`, and `without` leaves exactly the other properties, still parseable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqttgate::mqtt::properties::{find, first, parse, without};

fuzz_target!(|data: &[u8]| {
    let Some((&id, bytes)) = data.split_first() else {
        return;
    };
    let parsed = parse(bytes);
    let _ = (find(bytes, id), first(bytes, id));
    if let Ok(list) = parsed {
        let expected = list.iter().find(|p| p.id == id).map(|p| p.value);
        if let Ok(found) = first(bytes, id) {
            assert_eq!(found, expected);
        }
        let rest = without(bytes, &[id]).expect("a list that parsed can be filtered");
        let rest = parse(&rest).expect("what is left parses");
        let kept: Vec<_> = list.iter().filter(|p| p.id != id).collect();
        assert_eq!(rest.iter().collect::<Vec<_>>(), kept);
    }
});
