//! The gRPC front: the only way into the domain. Mutual TLS is mandatory; every call passes the
//! [`edge`] layer, then the [`authorize`] layer, then reaches one of the service adapters in
//! [`services`].

pub mod authorize;
pub mod contract;
pub mod edge;
pub mod services;
pub mod slow_consumer;
