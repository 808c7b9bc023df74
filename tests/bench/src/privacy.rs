//! `privacy`: what crypto-shredding costs per event, without the broker:
//! encrypting a `case_opened`'s personal fields (customer id, a 120-char
//! summary, three attributes) into `Protected`, and decrypting them back,
//! one core. The OpenCase rate with and without encryption is
//! `open-case` beside `open-case-plaintext`.

use std::time::{Duration, Instant};

use casework_domain::pb::{self, envelope::Payload};
use casework_privacy::protect::{self, KeyRef, Place};
use casework_privacy::{DataKey, Kek};

use crate::report;

fn opened(i: usize) -> Payload {
    Payload::CaseOpened(pb::CaseOpened {
        customer_id: format!("customer-{i}@example.com"),
        summary: "Returned the parcel two weeks ago, still no refund; the courier says it was delivered, please check".into(),
        attributes: [
            ("order".to_owned(), format!("B-{i}")),
            ("device".to_owned(), "kettle-2000".to_owned()),
            ("store".to_owned(), "berlin-3".to_owned()),
        ]
        .into(),
        service_code: "refund".into(),
        ..Default::default()
    })
}

fn timed(n: usize, mut op: impl FnMut(usize)) -> (Vec<Duration>, Duration) {
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        op(i);
        lat.push(t.elapsed());
    }
    (lat, start.elapsed())
}

/// Runs the scenario and prints its lines.
pub async fn privacy() {
    let n = report::scaled(100_000);
    let key = DataKey::generate();
    let kref = KeyRef {
        subject: ulid::Ulid::new().to_string(),
        key_id: ulid::Ulid::new().to_string(),
    };
    let ids: Vec<String> = (0..n).map(|_| ulid::Ulid::new().to_string()).collect();
    let at = |i: usize| Place {
        tenant: "bench",
        case_id: "01JD8X3V5R6M2Q4T7W9Y0Z1A2B",
        event_id: &ids[i],
    };
    let mut sealed = Vec::with_capacity(n);
    let (lat, el) = timed(n, |i| {
        let mut p = opened(i);
        protect::protect(&mut p, at(i), &kref, &key);
        sealed.push(p);
    });
    report::print(
        "privacy-encrypt",
        1,
        lat,
        n,
        el,
        serde_json::json!({"unit": "events", "what": "case_opened personal fields into Protected (AES-256-GCM)"}),
    );
    let (lat, el) = timed(n, |i| {
        protect::reveal(&mut sealed[i], at(i), &key).expect("decrypts");
    });
    report::print(
        "privacy-decrypt",
        1,
        lat,
        n,
        el,
        serde_json::json!({"unit": "events"}),
    );
    let (lat, el) = timed(n, |i| {
        let _ = opened(i);
    });
    report::print(
        "privacy-encrypt-raw",
        1,
        lat,
        n,
        el,
        serde_json::json!({"unit": "events", "what": "building the same payload, not encrypting it"}),
    );
    let (kek, _) = Kek::generate();
    let m = n / 10;
    let (lat, el) = timed(m, |i| {
        let k = DataKey::generate();
        let w = kek.wrap(&k, "bench", &ids[i], &ids[i]);
        kek.unwrap(&w, "bench", &ids[i], &ids[i]).expect("unwraps");
    });
    report::print(
        "privacy-key-wrap-unwrap",
        1,
        lat,
        m,
        el,
        serde_json::json!({"unit": "keys"}),
    );
}
