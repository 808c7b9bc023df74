//! Position tokens of Subscribe and page tokens of GetHistory: opaque to
//! clients, strict to parse. A position is a stream sequence (resume after
//! it); a page token is the next case position.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::{Error, Result};

const POSITION_VERSION: u8 = 1;
const PAGE_VERSION: u8 = 2;

fn encode(version: u8, n: u64) -> String {
    let mut b = vec![version];
    b.extend_from_slice(&n.to_be_bytes());
    URL_SAFE_NO_PAD.encode(b)
}

fn decode(field: &'static str, version: u8, token: &str) -> Result<u64> {
    let bad = || Error::InvalidArgument {
        field,
        why: format!(
            "{token:?} is not a token this server issued; pass back exactly the value it returned"
        ),
    };
    let b = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    match b.as_slice() {
        [v, rest @ ..] if *v == version && rest.len() == 8 => {
            Ok(u64::from_be_bytes(rest.try_into().map_err(|_| bad())?))
        }
        _ => Err(bad()),
    }
}

/// The position token of the event at stream sequence `stream_seq`.
pub fn position(stream_seq: u64) -> String {
    encode(POSITION_VERSION, stream_seq)
}

/// The stream sequence a position token names.
pub fn parse_position(field: &'static str, token: &str) -> Result<u64> {
    decode(field, POSITION_VERSION, token)
}

/// A page token for the next case position.
pub fn page(next_position: u64) -> String {
    encode(PAGE_VERSION, next_position)
}

/// The next case position a page token names.
pub fn parse_page(field: &'static str, token: &str) -> Result<u64> {
    decode(field, PAGE_VERSION, token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn tokens_round_trip(n in any::<u64>()) {
            prop_assert_eq!(parse_position("p", &position(n)).unwrap(), n);
            prop_assert_eq!(parse_page("p", &page(n)).unwrap(), n);
            // a page token is not a position and vice versa
            prop_assert!(parse_position("p", &page(n)).is_err());
            prop_assert!(parse_page("p", &position(n)).is_err());
        }
    }

    #[test]
    fn garbage_is_invalid() {
        for bad in ["", "x", "!!!", "AQ", &position(1)[..5]] {
            assert!(matches!(
                parse_position("after_position", bad),
                Err(Error::InvalidArgument {
                    field: "after_position",
                    ..
                })
            ));
        }
    }
}
