//! HTTP listeners on actix-web.

pub mod upload;
