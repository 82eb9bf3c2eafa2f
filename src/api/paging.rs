//! What the list endpoints share (`GET /api/orders`, `GET /api/inventory`):
//! `limit` is the page size, `after` the previous page's `nextCursor`, and a
//! page as long as `limit` carries the cursor of the next one.

use std::collections::HashMap;

use crate::domain::FieldError;

pub const DEFAULT_PAGE: u32 = 20;
pub const MAX_PAGE: u32 = 100;

/// The `limit` parameter. An empty or out-of-range value is refused (the
/// schema's minimum and maximum refuse it), never read as the default.
pub fn limit(query: &HashMap<String, String>, errors: &mut Vec<FieldError>) -> u32 {
    let Some(raw) = query.get("limit") else {
        return DEFAULT_PAGE;
    };
    match raw.parse::<u32>() {
        Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
        _ => {
            errors.push(FieldError::new(
                "limit",
                format!("must be an integer 1..={MAX_PAGE}"),
            ));
            DEFAULT_PAGE
        }
    }
}

/// The cursor of the page after `items`: its last item's key, when the page
/// is full (a shorter page is the last).
pub fn next_cursor<T, K>(items: &[T], limit: u32, key: impl Fn(&T) -> K) -> Option<K> {
    (items.len() == limit as usize)
        .then(|| items.last().map(key))
        .flatten()
}
