//! The pipeline's filters, after pingora: `request` decides whether a
//! request may go at all, `upstream` prepares what goes (placeholders,
//! injection, the request body), `response` prepares what comes back
//! (scrubbing).

pub(crate) mod request;
pub(crate) mod response;
pub(crate) mod upstream;
