//! Stream negotiation: STARTTLS, SASL, binding. Knows streams and
//! authentication, not routing.

pub mod accept;
pub mod negotiate;
pub mod sasl;
pub mod xmlstream;

pub use xmlstream::new_id;
