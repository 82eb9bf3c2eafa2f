//! What a caller may do. Its own module because both the configuration
//! (which tokens grant which scopes) and authentication use it.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    OrdersRead,
    OrdersWrite,
    Admin,
}

impl Scope {
    pub const ALL_NAMES: &'static str = "orders:read, orders:write, admin";

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrdersRead => "orders:read",
            Self::OrdersWrite => "orders:write",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "orders:read" => Some(Self::OrdersRead),
            "orders:write" => Some(Self::OrdersWrite),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}
