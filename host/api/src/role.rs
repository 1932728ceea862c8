//! Roles: what a certificate or token allows.

use serde::{Deserialize, Serialize};

/// What a client certificate (or an HTTP token) allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Reads only.
    Reader,
    /// Reads and FSM commands.
    Writer,
    /// Everything, including module deploys and membership changes.
    Admin,
}

impl Role {
    /// All roles, weakest first.
    pub const ALL: [Role; 3] = [Role::Reader, Role::Writer, Role::Admin];

    /// The role's name in certificates and configs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }
}
