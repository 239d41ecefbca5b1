//! The gRPC front: the only way into the domain. Mutual TLS is mandatory; every call passes the
//! [`edge`] layer, then the [`authorize`] layer (which identifies the caller, checks the request
//! against its contract's rules with [`validate`] and applies the method's policy), then reaches
//! one of the service adapters in [`services`].

pub mod authorize;
pub mod contract;
pub mod edge;
pub mod services;
pub mod slow_consumer;
pub mod validate;
