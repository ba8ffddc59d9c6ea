//! Starling: a clustered XMPP server. See README.md and docs/ for the map.

pub mod xml;
