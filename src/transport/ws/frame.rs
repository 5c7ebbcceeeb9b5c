//! RFC 6455 framing, I/O-free: a [`Decoder`] that unmasks client frames in place and keeps
//! only a partial header and a control frame's payload between reads, and the header
//! writer for the server's unmasked frames.
//!
//! MQTT over WebSockets (MQTT 5.0 §6) is a byte stream carried in binary frames: a packet
//! may span frames and a frame may hold several packets, so data frames are never
//! assembled into messages here. Their payload bytes are handed on as they arrive, which is
//! what lets an idle WebSocket session hold no buffer at all.

use std::fmt;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Close codes (RFC 6455 §7.4.1) mqttgate sends.
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub const CLOSE_UNSUPPORTED_DATA: u16 = 1003;

/// Control frames carry at most 125 bytes (RFC 6455 §5.5).
pub const MAX_CONTROL: usize = 125;
/// The longest server frame header: FIN/opcode, 127, then a 64-bit length.
pub const MAX_HEADER: usize = 10;

/// Why the client's frames were refused; the connection is closed with [`code`](Self::code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// MQTT-6.0.0-1: MQTT travels in binary frames only.
    TextFrame,
    /// A client frame without a mask (RFC 6455 §5.1).
    Unmasked,
    /// Reserved bits set: no extension was negotiated.
    ReservedBits,
    UnknownOpcode(u8),
    /// A fragmented or over-long control frame, or a one-byte close payload.
    BadControl,
    /// A continuation with no message to continue, or a new message inside one.
    BadFragmentation,
    /// A 64-bit length with its most significant bit set.
    BadLength,
}

impl FrameError {
    pub fn code(self) -> u16 {
        match self {
            FrameError::TextFrame => CLOSE_UNSUPPORTED_DATA,
            _ => CLOSE_PROTOCOL_ERROR,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TextFrame => f.write_str("text frame (MQTT needs binary frames)"),
            FrameError::Unmasked => f.write_str("unmasked client frame"),
            FrameError::ReservedBits => f.write_str("reserved bits set"),
            FrameError::UnknownOpcode(op) => write!(f, "unknown opcode {op:#x}"),
            FrameError::BadControl => f.write_str("malformed control frame"),
            FrameError::BadFragmentation => f.write_str("bad fragmentation"),
            FrameError::BadLength => f.write_str("bad frame length"),
        }
    }
}

impl std::error::Error for FrameError {}

/// A control frame's payload, copied out of the stream.
#[derive(Clone, Copy)]
pub struct Control {
    bytes: [u8; MAX_CONTROL],
    len: u8,
}

impl Control {
    const EMPTY: Control = Control {
        bytes: [0; MAX_CONTROL],
        len: 0,
    };

    pub fn payload(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    fn push(&mut self, b: &[u8]) {
        let at = usize::from(self.len);
        self.bytes[at..at + b.len()].copy_from_slice(b);
        self.len += b.len() as u8;
    }
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Control({:02x?})", self.payload())
    }
}

/// What the frame being read is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Data,
    Ping,
    Pong,
    Close,
}

/// Decodes the client's frames. Between two reads it holds at most a partial header (14
/// bytes) and one control payload (125 bytes): no allocation, ever.
pub struct Decoder {
    header: [u8; 14],
    header_len: u8,
    /// The frame whose payload is being read, once its header is complete.
    kind: Option<Kind>,
    remaining: u64,
    mask: [u8; 4],
    /// Payload bytes of the current frame already unmasked, modulo 4.
    mask_at: u8,
    control: Control,
    /// A fragmented binary message is open: the next data frame must be a continuation.
    in_message: bool,
    /// The newest ping's payload, to be answered with a pong (RFC 6455 §5.5.3 allows
    /// answering only the most recent one).
    pub pong_due: Option<Control>,
    /// The client's close frame arrived: its status code, if it gave one. Nothing after it
    /// is read.
    pub close: Option<Option<u16>>,
}

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder {
            header: [0; 14],
            header_len: 0,
            kind: None,
            remaining: 0,
            mask: [0; 4],
            mask_at: 0,
            control: Control::EMPTY,
            in_message: false,
            pong_due: None,
            close: None,
        }
    }
}

/// The header's full length once its first two bytes are known.
fn header_len(second: u8) -> usize {
    let ext = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if second & 0x80 != 0 { 4 } else { 0 }
}

impl Decoder {
    /// Decodes the raw bytes in `buf` in place: the data frames' payload, unmasked, is
    /// moved to the front of `buf` and its length returned; headers and control frames are
    /// consumed. After a close frame the rest is ignored.
    pub fn decode(&mut self, buf: &mut [u8]) -> Result<usize, FrameError> {
        let mut read = 0;
        let mut written = 0;
        while read < buf.len() && self.close.is_none() {
            let Some(kind) = self.kind else {
                read += self.take_header(&buf[read..])?;
                continue;
            };
            let n = (buf.len() - read).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
            let chunk = &mut buf[read..read + n];
            unmask(chunk, self.mask, self.mask_at);
            self.mask_at = ((usize::from(self.mask_at) + n) % 4) as u8;
            match kind {
                Kind::Data => {
                    buf.copy_within(read..read + n, written);
                    written += n;
                }
                _ => self.control.push(chunk),
            }
            read += n;
            self.remaining -= n as u64;
            if self.remaining == 0 {
                self.finish_frame()?;
            }
        }
        Ok(written)
    }

    /// Takes header bytes from `input`; returns how many it used.
    fn take_header(&mut self, input: &[u8]) -> Result<usize, FrameError> {
        let mut used = 0;
        loop {
            let have = usize::from(self.header_len);
            // Two bytes say how long the rest of the header is.
            let need = if have < 2 {
                2
            } else {
                header_len(self.header[1])
            };
            if have == need {
                self.start_frame()?;
                return Ok(used);
            }
            let n = (need - have).min(input.len() - used);
            if n == 0 {
                return Ok(used);
            }
            self.header[have..have + n].copy_from_slice(&input[used..used + n]);
            self.header_len += n as u8;
            used += n;
        }
    }

    fn start_frame(&mut self) -> Result<(), FrameError> {
        let h = &self.header[..usize::from(self.header_len)];
        let (first, second) = (h[0], h[1]);
        let fin = first & 0x80 != 0;
        if first & 0x70 != 0 {
            return Err(FrameError::ReservedBits);
        }
        if second & 0x80 == 0 {
            return Err(FrameError::Unmasked);
        }
        let (len, rest) = match second & 0x7f {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), &h[4..]),
            127 => {
                let len = u64::from_be_bytes(h[2..10].try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(FrameError::BadLength);
                }
                (len, &h[10..])
            }
            n => (u64::from(n), &h[2..]),
        };
        let opcode = first & 0x0f;
        let kind = match opcode {
            OP_BINARY | OP_CONTINUATION => {
                if (opcode == OP_CONTINUATION) != self.in_message {
                    return Err(FrameError::BadFragmentation);
                }
                self.in_message = !fin;
                Kind::Data
            }
            OP_TEXT => return Err(FrameError::TextFrame),
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin || len > MAX_CONTROL as u64 {
                    return Err(FrameError::BadControl);
                }
                match opcode {
                    OP_CLOSE => Kind::Close,
                    OP_PING => Kind::Ping,
                    _ => Kind::Pong,
                }
            }
            op => return Err(FrameError::UnknownOpcode(op)),
        };
        self.mask = rest[..4].try_into().expect("4 bytes");
        self.mask_at = 0;
        self.remaining = len;
        self.kind = Some(kind);
        self.header_len = 0;
        self.control = Control::EMPTY;
        if len == 0 {
            self.finish_frame()?;
        }
        Ok(())
    }

    fn finish_frame(&mut self) -> Result<(), FrameError> {
        match self.kind.take() {
            Some(Kind::Ping) => self.pong_due = Some(self.control),
            Some(Kind::Close) => {
                let p = self.control.payload();
                self.close = Some(match p.len() {
                    0 => None,
                    1 => return Err(FrameError::BadControl),
                    _ => Some(u16::from_be_bytes([p[0], p[1]])),
                });
            }
            Some(Kind::Pong | Kind::Data) | None => {}
        }
        Ok(())
    }
}

/// XORs `bytes` with the mask, starting `at` bytes into it (RFC 6455 §5.3).
fn unmask(bytes: &mut [u8], mask: [u8; 4], at: u8) {
    let mut key = mask;
    key.rotate_left(usize::from(at));
    // Eight bytes at a time: the relay's reads are up to 16 KiB.
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = bytes.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes(c.try_into().expect("8 bytes")) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// Writes a server frame header (FIN set, unmasked: RFC 6455 §5.1) for `len` payload bytes
/// into `out`; returns its length.
pub fn write_header(opcode: u8, len: usize, out: &mut [u8]) -> usize {
    out[0] = 0x80 | opcode;
    match len {
        0..=125 => {
            out[1] = len as u8;
            2
        }
        126..=0xffff => {
            out[1] = 126;
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            out[1] = 127;
            out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    }
}

/// A whole control frame from the server: a pong echoing `payload`, or a close.
#[derive(Clone, Copy)]
pub struct ControlFrame {
    bytes: [u8; 2 + MAX_CONTROL],
    len: u8,
}

impl ControlFrame {
    pub fn pong(payload: &Control) -> ControlFrame {
        ControlFrame::new(OP_PONG, payload.payload())
    }

    pub fn close(code: u16) -> ControlFrame {
        ControlFrame::new(OP_CLOSE, &code.to_be_bytes())
    }

    fn new(opcode: u8, payload: &[u8]) -> ControlFrame {
        let mut bytes = [0; 2 + MAX_CONTROL];
        let h = write_header(opcode, payload.len(), &mut bytes);
        bytes[h..h + payload.len()].copy_from_slice(payload);
        ControlFrame {
            bytes,
            len: (h + payload.len()) as u8,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked with `mask`, FIN as given.
    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![0u8; MAX_HEADER];
        let h = write_header(opcode, payload.len(), &mut out);
        out.truncate(h);
        if !fin {
            out[0] &= 0x7f;
        }
        out[1] |= 0x80;
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// Decodes `bytes` delivered in pieces of the given sizes (cycled), as reads would.
    fn decode_in(d: &mut Decoder, bytes: &[u8], pieces: &[usize]) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::new();
        let mut at = 0;
        let mut i = 0;
        while at < bytes.len() {
            let n = pieces[i % pieces.len()].min(bytes.len() - at);
            let mut chunk = bytes[at..at + n].to_vec();
            let k = d.decode(&mut chunk)?;
            out.extend_from_slice(&chunk[..k]);
            at += n;
            i += 1;
        }
        Ok(out)
    }

    #[test]
    fn every_split_of_a_stream_decodes_to_the_same_bytes() {
        let payload: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        let mut wire = frame(false, OP_BINARY, &payload[..5], MASK);
        wire.extend(frame(true, OP_PING, b"hi", [1, 2, 3, 4]));
        wire.extend(frame(true, OP_CONTINUATION, &payload[5..200], [9, 8, 7, 6]));
        wire.extend(frame(true, OP_BINARY, &payload[200..], MASK));
        wire.extend(frame(true, OP_BINARY, &[], MASK));
        for size in 1..=wire.len() {
            let mut d = Decoder::default();
            let got = decode_in(&mut d, &wire, &[size]).unwrap();
            assert_eq!(got, payload, "pieces of {size}");
            assert_eq!(d.pong_due.unwrap().payload(), b"hi");
            assert!(!d.in_message);
        }
        // Uneven pieces too.
        let mut d = Decoder::default();
        assert_eq!(
            decode_in(&mut d, &wire, &[1, 3, 2, 7, 13]).unwrap(),
            payload
        );
    }

    #[test]
    fn lengths_in_16_and_64_bits() {
        for len in [125usize, 126, 65_535, 65_536, 1 << 20] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let wire = frame(true, OP_BINARY, &payload, MASK);
            let mut d = Decoder::default();
            assert_eq!(decode_in(&mut d, &wire, &[4096]).unwrap(), payload, "{len}");
        }
    }

    #[test]
    fn a_close_frame_ends_reading_and_carries_its_code() {
        let mut wire = frame(true, OP_BINARY, b"ab", MASK);
        wire.extend(frame(true, OP_CLOSE, &1001u16.to_be_bytes(), MASK));
        wire.extend(frame(true, OP_BINARY, b"after", MASK));
        let mut d = Decoder::default();
        assert_eq!(decode_in(&mut d, &wire, &[wire.len()]).unwrap(), b"ab");
        assert_eq!(d.close, Some(Some(1001)));

        let mut d = Decoder::default();
        decode_in(&mut d, &frame(true, OP_CLOSE, &[], MASK), &[64]).unwrap();
        assert_eq!(d.close, Some(None));
    }

    #[test]
    fn protocol_violations_are_refused_with_their_close_code() {
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (frame(true, OP_TEXT, b"x", MASK), FrameError::TextFrame),
            (
                {
                    let mut f = frame(true, OP_BINARY, b"x", MASK);
                    f[1] &= 0x7f;
                    f
                },
                FrameError::Unmasked,
            ),
            (
                {
                    let mut f = frame(true, OP_BINARY, b"x", MASK);
                    f[0] |= 0x40;
                    f
                },
                FrameError::ReservedBits,
            ),
            (frame(true, 0x3, b"x", MASK), FrameError::UnknownOpcode(3)),
            (frame(false, OP_PING, b"x", MASK), FrameError::BadControl),
            (
                frame(true, OP_PING, &[0; 126], MASK),
                FrameError::BadControl,
            ),
            (frame(true, OP_CLOSE, &[3], MASK), FrameError::BadControl),
            (
                frame(true, OP_CONTINUATION, b"x", MASK),
                FrameError::BadFragmentation,
            ),
            (
                {
                    let mut f = frame(false, OP_BINARY, b"x", MASK);
                    f.extend(frame(true, OP_BINARY, b"y", MASK));
                    f
                },
                FrameError::BadFragmentation,
            ),
            (
                vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
                FrameError::BadLength,
            ),
        ];
        for (wire, want) in cases {
            let mut d = Decoder::default();
            assert_eq!(decode_in(&mut d, &wire, &[wire.len()]), Err(want));
            assert_eq!(
                want.code(),
                if want == FrameError::TextFrame {
                    1003
                } else {
                    1002
                }
            );
        }
    }

    #[test]
    fn server_headers_use_the_shortest_length_form() {
        let mut out = [0u8; MAX_HEADER];
        assert_eq!(write_header(OP_BINARY, 125, &mut out), 2);
        assert_eq!(&out[..2], [0x82, 125]);
        assert_eq!(write_header(OP_BINARY, 126, &mut out), 4);
        assert_eq!(&out[..4], [0x82, 126, 0, 126]);
        assert_eq!(write_header(OP_BINARY, 70_000, &mut out), 10);
        assert_eq!(&out[..10], [0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        assert_eq!(ControlFrame::close(1000).bytes(), [0x88, 2, 0x03, 0xe8]);
        let mut ping = Control::EMPTY;
        ping.push(b"abc");
        assert_eq!(
            ControlFrame::pong(&ping).bytes(),
            [0x8a, 3, b'a', b'b', b'c']
        );
    }

    #[test]
    fn unmasking_matches_the_byte_by_byte_definition_at_every_offset() {
        let data: Vec<u8> = (0..67u8).collect();
        for at in 0..4u8 {
            let mut fast = data.clone();
            unmask(&mut fast, MASK, at);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ MASK[(i + usize::from(at)) % 4])
                .collect();
            assert_eq!(fast, slow, "offset {at}");
        }
    }
}
