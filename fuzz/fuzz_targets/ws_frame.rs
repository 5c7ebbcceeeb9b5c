//! Any bytes as a client's WebSocket frames: the decoder never panics, and the stream fed
//! whole or in pieces (as reads cut it) gives the same payload, the same close and the
//! same answer owed to a ping.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqttgate::transport::ws::frame::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let mut whole = Decoder::default();
    let mut buf = data.to_vec();
    let whole_out = whole.decode(&mut buf).map(|n| buf[..n].to_vec());

    // Pieces of `cut` bytes (at least one), as a read of that size would give them.
    let mut pieces = Decoder::default();
    let mut pieces_out = Ok(Vec::new());
    for chunk in data.chunks(usize::from(cut).max(1)) {
        let mut chunk = chunk.to_vec();
        match pieces.decode(&mut chunk) {
            Ok(n) => {
                if let Ok(out) = pieces_out.as_mut() {
                    out.extend_from_slice(&chunk[..n]);
                }
            }
            Err(e) => {
                pieces_out = Err(e);
                break;
            }
        }
    }
    assert_eq!(
        whole_out.is_ok(),
        pieces_out.is_ok(),
        "{whole_out:?} {pieces_out:?}"
    );
    if let (Ok(a), Ok(b)) = (&whole_out, &pieces_out) {
        assert_eq!(a, b);
        assert_eq!(whole.close, pieces.close);
        assert_eq!(
            whole.pong_due.map(|c| c.payload().to_vec()),
            pieces.pong_due.map(|c| c.payload().to_vec())
        );
        assert!(a.len() <= data.len());
    }
});
