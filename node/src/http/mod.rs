//! HTTP listeners on actix-web.

pub mod bosh;
pub mod upload;
