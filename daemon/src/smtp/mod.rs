//! SMTP ingress (DESIGN §3): the pure session core, the in-flight byte budget, STARTTLS and
//! the smol I/O driver.

pub mod budget;
pub mod server;
pub mod session;
pub mod tls;
