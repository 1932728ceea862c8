//! wraft-api: the client protocol. The requests clients and nodes exchange, their answers,
//! errors and the roles that allow them: one definition, whatever carries it. The QUIC
//! transport (`wraft-transport-quic`), the HTTP surface and the Rust client all speak it and
//! depend on nothing of each other, as quinn keeps `quinn-proto` apart from `quinn`.
//!
//! * [`request`]: [`ApiCall`] (what opens a stream: a caller's own [`ApiRequest`], or one a
//!   voter forwards, or the opening of a pipeline of calls), read levels and payloads, and
//!   the role each request needs.
//! * [`response`]: [`ApiResponse`] and the listings and reports it carries.
//! * [`error`]: [`ApiError`], every refusal a caller can get.
//! * [`Role`]: reader < writer < admin.

pub mod error;
pub mod request;
pub mod response;
mod role;

pub use error::{ApiError, ApiResult};
pub use request::{
    ApiCall, ApiCallRef, ApiRequest, Consistency, MAX_UPLOAD_BYTES, Once, Payload, PipelinedReply,
    UPLOAD_CHUNK,
};
pub use response::{
    ApiResponse, BackupFile, BackupManifest, ClusterStatus, Compacted, FsmInfo, MAX_REPLY,
    ModuleInfo, NodeFeatures, NodeStatus, StageLatency,
};
pub use role::Role;
