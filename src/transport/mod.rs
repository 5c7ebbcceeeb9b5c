//! The client side of a connection: the stream the phases and the relay read and write
//! ([`ClientStream`]), the client's address ([`Peer`]), and the I/O under them.

pub mod packet_io;
pub mod pool;
pub mod relay;
pub mod tls_io;
