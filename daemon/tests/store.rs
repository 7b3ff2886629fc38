//! The RocksDB metadata store (DESIGN §6) against a real RocksDB in a temporary directory:
//! round trips, persistence, listings and pagination, deletion and erasure, audit, API keys,
//! settings, retention with crypto-shredding, encryption at rest, the master-key check, and
//! durability of acknowledged writes across `kill -9`.
//!
//! Time is injected everywhere (records carry their own `received_at`, sweeps take `now`), so
//! every test is deterministic.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mxnode::store::rocks::{
    CF_RECORDS, DB_DIR, KEYSTORE_FILE, KeyBuckets, Readability, RocksStore,
};
use mxnode::store::{
    ApiKeyRecord, AttachmentSummary, AuditEvent, AuditQuery, DEFAULT_PAGE_SIZE, EmailRecord,
    MAX_PAGE_SIZE, Page, RecordQuery, Retention, Status, Store, StoreError, new_id,
};

const MASTER_KEY: [u8; 32] = [0x42; 32];
const HOUR: u64 = 60 * 60 * 1000;
const MINUTE: u64 = 60 * 1000;
const DAY: u64 = 24 * HOUR;
/// A day boundary (2023-11-14T00:00:00Z), so hour and day buckets start exactly at T0.
const T0: u64 = 19_675 * DAY;

fn open(dir: &Path) -> RocksStore {
    RocksStore::open(dir, &MASTER_KEY).expect("the store opens")
}

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A minimal record received at `received_at` for `recipients`.
fn record(received_at: u64, recipients: &[&str], status: Status) -> EmailRecord {
    EmailRecord {
        id: new_id("rec_", at(received_at)),
        delivery_id: format!("msg_{received_at}"),
        message_id: None,
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        route: "*@in.example.test".to_string(),
        subject: None,
        received_at,
        delivered_at: None,
        status,
        smtp_code: 250,
        webhook_status: None,
        webhook_latency_ms: None,
        attachments: Vec::new(),
        size: 1234,
        dmarc: None,
    }
}

/// A record with every optional field set and non-ASCII text.
fn full_record(received_at: u64) -> EmailRecord {
    EmailRecord {
        id: new_id("rec_", at(received_at)),
        delivery_id: "msg_0123456789abcdef".to_string(),
        message_id: Some("<abc.123@example.org>".to_string()),
        recipients: vec![
            "bob@in.example.test".to_string(),
            "Ännchen@in.example.test".to_string(),
        ],
        route: "*@in.example.test".to_string(),
        subject: Some("Quarterly report — Übersicht 📈".to_string()),
        received_at,
        delivered_at: Some(received_at + 812),
        status: Status::Rejected,
        smtp_code: 550,
        webhook_status: Some(422),
        webhook_latency_ms: Some(811),
        attachments: vec![
            AttachmentSummary {
                filename: Some("report.pdf".to_string()),
                content_type: "application/pdf".to_string(),
                size: 123_456,
            },
            AttachmentSummary {
                filename: None,
                content_type: "image/png".to_string(),
                size: 7,
            },
        ],
        size: 234_567,
        dmarc: Some("fail".into()),
    }
}

fn event(time: u64, action: &str) -> AuditEvent {
    AuditEvent {
        id: new_id("aud_", at(time)),
        time,
        actor: "admin".to_string(),
        action: action.to_string(),
        target: Some("k0123456789abcdef".to_string()),
        detail: Some("deleted 3 records".to_string()),
    }
}

fn put_all(store: &RocksStore, records: &[EmailRecord]) {
    for record in records {
        store.put_record(record).expect("put_record");
    }
}

fn ids<T>(items: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
    items.iter().map(|item| id(item).to_string()).collect()
}

fn record_ids(page: &Page<EmailRecord>) -> Vec<String> {
    ids(&page.items, |r| &r.id)
}

/// Ids of `records`, newest first (the order of every listing).
fn newest_first(records: &[&EmailRecord]) -> Vec<String> {
    let mut sorted: Vec<&EmailRecord> = records.to_vec();
    sorted.sort_by(|a, b| (b.received_at, &b.id).cmp(&(a.received_at, &a.id)));
    sorted.iter().map(|r| r.id.clone()).collect()
}

/// Follows `next` cursors from the first page to the last, returning every id in order.
fn all_pages(store: &RocksStore, query: &RecordQuery) -> Vec<String> {
    let mut query = query.clone();
    let mut seen = Vec::new();
    loop {
        let page = store.list_records(&query).expect("list_records");
        assert!(
            query.limit == 0 || page.items.len() <= query.limit,
            "page over its limit"
        );
        seen.extend(record_ids(&page));
        match page.next {
            Some(next) => query.cursor = Some(next),
            None => return seen,
        }
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// The files under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|path| {
            let bytes = fs::read(path).expect("read file");
            bytes.windows(needle.len()).any(|window| window == needle)
        })
        .collect()
}

/// The random end of an id. SST blocks store a key after the bytes it shares with the previous
/// key, so a whole id may not appear in a file, but its random tail always does.
fn id_tail(id: &str) -> &[u8] {
    &id.as_bytes()[id.len() - 12..]
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create copy dir");
    for entry in fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).expect("copy file");
        }
    }
}

#[test]
fn every_field_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let full = full_record(T0 + 5 * MINUTE);
    let bare = record(T0 + 6 * MINUTE, &[], Status::Failed);
    put_all(&store, &[full.clone(), bare.clone()]);
    assert_eq!(store.get_record(&full.id).expect("get"), Some(full));
    assert_eq!(store.get_record(&bare.id).expect("get"), Some(bare));
    assert_eq!(store.get_record("rec_unknown").expect("get"), None);
    assert_eq!(
        store.get_record("").expect("an empty id is no record"),
        None
    );
}

#[test]
fn everything_persists_across_close_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = full_record(T0);
    let audit = event(T0, "settings.update");
    let key = ApiKeyRecord {
        id: "k7f3a9c2e1b04d6a8".to_string(),
        name: "ci".to_string(),
        scopes: vec!["emails:read".to_string()],
        created_at: T0,
        secret_sha256: "ab".repeat(32),
    };
    {
        let store = open(dir.path());
        store.put_record(&full).expect("put_record");
        store.append_audit(&audit).expect("append_audit");
        store.put_api_key(&key).expect("put_api_key");
        store
            .put_setting("settings", b"{\"a\":1}")
            .expect("put_setting");
    }
    let store = open(dir.path());
    assert_eq!(store.get_record(&full.id).expect("get"), Some(full.clone()));
    assert_eq!(
        record_ids(&store.list_records(&RecordQuery::default()).expect("list")),
        vec![full.id]
    );
    let events = store
        .list_audit(&AuditQuery::default())
        .expect("list_audit");
    assert_eq!(events.items, vec![audit]);
    assert_eq!(store.get_api_key(&key.id).expect("get key"), Some(key));
    assert_eq!(
        store
            .get_setting("settings")
            .expect("get setting")
            .as_deref(),
        Some(&b"{\"a\":1}"[..])
    );
}

/// Lists with `query` (no cursor, large limit) and compares the ids, newest first.
fn check(store: &RocksStore, name: &str, query: RecordQuery, expect: &[&EmailRecord]) {
    let query = RecordQuery {
        limit: MAX_PAGE_SIZE,
        ..query
    };
    let page = store.list_records(&query).expect("list_records");
    assert_eq!(record_ids(&page), newest_first(expect), "{name}");
    assert_eq!(page.next, None, "{name}: everything fits one page");
}

#[test]
fn listing_filters_select_the_right_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let a = record(T0 + 1_000, &["alice@in.example.test"], Status::Delivered);
    let b = record(T0 + 2_000, &["bob@in.example.test"], Status::Tempfailed);
    let c = record(
        T0 + HOUR + 1_000,
        &["Alice@IN.example.test", "bob@in.example.test"],
        Status::Delivered,
    );
    let d = record(
        T0 + 2 * HOUR + 5_000,
        &["carol@in.example.test"],
        Status::Rejected,
    );
    let e = record(
        T0 + 2 * HOUR + 6_000,
        &["alice@in.example.test"],
        Status::Failed,
    );
    put_all(
        &store,
        &[c.clone(), a.clone(), e.clone(), b.clone(), d.clone()],
    );

    let alice = || Some("ALICE@in.example.TEST".to_string());
    let cases: Vec<(&str, RecordQuery, Vec<&EmailRecord>)> = vec![
        (
            "no filter",
            RecordQuery::default(),
            vec![&a, &b, &c, &d, &e],
        ),
        (
            "status",
            RecordQuery {
                status: Some(Status::Delivered),
                ..Default::default()
            },
            vec![&a, &c],
        ),
        (
            "recipient, case-insensitive, across hours",
            RecordQuery {
                recipient: alice(),
                ..Default::default()
            },
            vec![&a, &c, &e],
        ),
        (
            "recipient and status",
            RecordQuery {
                recipient: alice(),
                status: Some(Status::Delivered),
                ..Default::default()
            },
            vec![&a, &c],
        ),
        (
            "since is inclusive",
            RecordQuery {
                since: Some(c.received_at),
                ..Default::default()
            },
            vec![&c, &d, &e],
        ),
        (
            "until is exclusive",
            RecordQuery {
                until: Some(c.received_at),
                ..Default::default()
            },
            vec![&a, &b],
        ),
        (
            "since and until inside hours",
            RecordQuery {
                since: Some(T0 + 1_500),
                until: Some(e.received_at),
                ..Default::default()
            },
            vec![&b, &c, &d],
        ),
        (
            "recipient with since",
            RecordQuery {
                recipient: Some("bob@in.example.test".to_string()),
                since: Some(T0 + HOUR),
                ..Default::default()
            },
            vec![&c],
        ),
        (
            "recipient with until",
            RecordQuery {
                recipient: Some("bob@in.example.test".to_string()),
                until: Some(T0 + HOUR),
                ..Default::default()
            },
            vec![&b],
        ),
        (
            "unknown recipient",
            RecordQuery {
                recipient: Some("nobody@in.example.test".to_string()),
                ..Default::default()
            },
            vec![],
        ),
        (
            "empty window",
            RecordQuery {
                since: Some(T0 + HOUR),
                until: Some(T0 + HOUR),
                ..Default::default()
            },
            vec![],
        ),
    ];
    for (name, query, expect) in cases {
        check(&store, name, query, &expect);
    }
}

/// 25 records over three hours, alternating status, all for alice.
fn pagination_fixture(store: &RocksStore) -> Vec<EmailRecord> {
    let records: Vec<EmailRecord> = (0..25)
        .map(|i| {
            let status = if i % 2 == 0 {
                Status::Delivered
            } else {
                Status::Tempfailed
            };
            record(T0 + i * 7 * MINUTE, &["alice@in.example.test"], status)
        })
        .collect();
    put_all(store, &records);
    records
}

#[test]
fn pagination_is_stable_while_new_records_arrive() {
    for (name, query) in [
        ("no filter", RecordQuery::default()),
        (
            "recipient",
            RecordQuery {
                recipient: Some("alice@in.example.test".to_string()),
                ..Default::default()
            },
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let old = pagination_fixture(&store);
        let expected_all = newest_first(&old.iter().collect::<Vec<_>>());
        let mut query = RecordQuery { limit: 10, ..query };
        let first = store.list_records(&query).expect("first page");
        assert_eq!(record_ids(&first), expected_all[..10], "{name}: first page");
        // Newer records arrive between pages; they must not shift what follows.
        let newer: Vec<EmailRecord> = (0..5)
            .map(|i| {
                record(
                    T0 + 4 * HOUR + i * MINUTE,
                    &["alice@in.example.test"],
                    Status::Delivered,
                )
            })
            .collect();
        put_all(&store, &newer);
        query.cursor = first.next.clone();
        assert!(query.cursor.is_some(), "{name}: a next page exists");
        let second = store.list_records(&query).expect("second page");
        assert_eq!(
            record_ids(&second),
            expected_all[10..20],
            "{name}: second page"
        );
        query.cursor = second.next.clone();
        let third = store.list_records(&query).expect("third page");
        assert_eq!(record_ids(&third), expected_all[20..], "{name}: third page");
        assert_eq!(third.next, None, "{name}: the last page says so");
    }
}

#[test]
fn paging_through_filtered_listings_yields_the_unpaged_result() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let old = pagination_fixture(&store);
    let delivered: Vec<&EmailRecord> = old
        .iter()
        .filter(|r| r.status == Status::Delivered)
        .collect();
    let window: Vec<&EmailRecord> = old
        .iter()
        .filter(|r| r.received_at >= T0 + HOUR && r.received_at < T0 + 2 * HOUR + 30 * MINUTE)
        .collect();
    for (name, query, expect) in [
        (
            "status, pages of 3",
            RecordQuery {
                status: Some(Status::Tempfailed),
                limit: 3,
                ..Default::default()
            },
            old.iter()
                .filter(|r| r.status == Status::Tempfailed)
                .collect::<Vec<_>>(),
        ),
        (
            "recipient and status, pages of 3",
            RecordQuery {
                recipient: Some("alice@in.example.test".to_string()),
                status: Some(Status::Delivered),
                until: Some(T0 + 4 * HOUR),
                limit: 3,
                ..Default::default()
            },
            delivered,
        ),
        (
            "time window, pages of 4",
            RecordQuery {
                since: Some(T0 + HOUR),
                until: Some(T0 + 2 * HOUR + 30 * MINUTE),
                limit: 4,
                ..Default::default()
            },
            window,
        ),
    ] {
        assert_eq!(all_pages(&store, &query), newest_first(&expect), "{name}");
    }
}

#[test]
fn page_size_defaults_to_50_and_is_capped_at_500() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let records: Vec<EmailRecord> = (0..MAX_PAGE_SIZE as u64 + 1)
        .map(|i| record(T0 + i * 1_000, &["a@in.example.test"], Status::Delivered))
        .collect();
    put_all(&store, &records);
    let default = store.list_records(&RecordQuery::default()).expect("list");
    assert_eq!(default.items.len(), DEFAULT_PAGE_SIZE);
    assert!(default.next.is_some());
    let capped = store
        .list_records(&RecordQuery {
            limit: 10_000,
            ..Default::default()
        })
        .expect("list");
    assert_eq!(capped.items.len(), MAX_PAGE_SIZE);
    let rest = store
        .list_records(&RecordQuery {
            limit: 10_000,
            cursor: capped.next,
            ..Default::default()
        })
        .expect("list");
    assert_eq!(record_ids(&rest), vec![records[0].id.clone()]);
    assert_eq!(rest.next, None);
}

#[test]
fn malformed_cursor_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    for cursor in ["not a cursor!", "", "AAAA"] {
        let query = RecordQuery {
            cursor: Some(cursor.to_string()),
            ..Default::default()
        };
        assert!(
            matches!(store.list_records(&query), Err(StoreError::BadCursor)),
            "records, cursor {cursor:?}"
        );
        let query = AuditQuery {
            cursor: Some(cursor.to_string()),
            ..Default::default()
        };
        assert!(
            matches!(store.list_audit(&query), Err(StoreError::BadCursor)),
            "audit, cursor {cursor:?}"
        );
    }
}

#[test]
fn deleted_record_is_gone_from_get_listings_and_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let a = record(T0, &["alice@in.example.test"], Status::Delivered);
    let b = record(T0 + 1_000, &["alice@in.example.test"], Status::Delivered);
    put_all(&store, &[a.clone(), b.clone()]);
    assert!(store.delete_record(&a.id).expect("delete"));
    assert_eq!(store.get_record(&a.id).expect("get"), None);
    assert!(
        !store.delete_record(&a.id).expect("second delete"),
        "already gone"
    );
    assert!(!store.delete_record("rec_never").expect("delete unknown"));
    assert!(!store.delete_record("").expect("delete empty id"));
    check(&store, "all", RecordQuery::default(), &[&b]);
    let by_alice = RecordQuery {
        recipient: Some("alice@in.example.test".to_string()),
        ..Default::default()
    };
    check(&store, "by recipient", by_alice, &[&b]);
}

#[test]
fn erasure_deletes_every_record_of_the_address_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let only_alice = record(T0, &["alice@in.example.test"], Status::Delivered);
    let alice_and_bob = record(
        T0 + HOUR,
        &["bob@in.example.test", "alice@in.example.test"],
        Status::Delivered,
    );
    let only_bob = record(T0 + HOUR + 1, &["bob@in.example.test"], Status::Delivered);
    let alice_upper = record(T0 + 3 * HOUR, &["ALICE@IN.EXAMPLE.TEST"], Status::Rejected);
    let carol = record(
        T0 + 3 * HOUR + 1,
        &["carol@in.example.test"],
        Status::Delivered,
    );
    let all = [&only_alice, &alice_and_bob, &only_bob, &alice_upper, &carol];
    put_all(&store, &all.map(Clone::clone));

    assert_eq!(
        store
            .erase_recipient("Alice@In.Example.Test")
            .expect("erase"),
        3
    );
    for gone in [&only_alice, &alice_and_bob, &alice_upper] {
        assert_eq!(store.get_record(&gone.id).expect("get"), None, "erased");
    }
    for kept in [&only_bob, &carol] {
        assert_eq!(
            store.get_record(&kept.id).expect("get").as_ref(),
            Some(kept),
            "kept"
        );
    }
    check(
        &store,
        "all after erasure",
        RecordQuery::default(),
        &[&only_bob, &carol],
    );
    // The erased record's other recipient no longer finds it: its index entry went too.
    let by_bob = RecordQuery {
        recipient: Some("bob@in.example.test".to_string()),
        ..Default::default()
    };
    check(&store, "bob after erasure", by_bob, &[&only_bob]);
    assert_eq!(
        store
            .erase_recipient("alice@in.example.test")
            .expect("erase again"),
        0
    );
    assert_eq!(
        store
            .erase_recipient("nobody@in.example.test")
            .expect("erase unknown"),
        0
    );
}

#[test]
fn rewriting_a_record_replaces_it_and_its_index_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let first = record(T0 + 10, &["alice@in.example.test"], Status::Tempfailed);
    store.put_record(&first).expect("put");
    // Same id, other recipient, other status, received in another hour.
    let second = EmailRecord {
        recipients: vec!["bob@in.example.test".to_string()],
        status: Status::Delivered,
        received_at: T0 + 2 * HOUR,
        ..first.clone()
    };
    store.put_record(&second).expect("put again");
    assert_eq!(
        store.get_record(&first.id).expect("get"),
        Some(second.clone())
    );
    check(
        &store,
        "one record, not two",
        RecordQuery::default(),
        &[&second],
    );
    let by = |address: &str| RecordQuery {
        recipient: Some(address.to_string()),
        ..Default::default()
    };
    check(&store, "old recipient", by("alice@in.example.test"), &[]);
    check(
        &store,
        "new recipient",
        by("bob@in.example.test"),
        &[&second],
    );
}

#[test]
fn audit_events_append_and_list_with_filters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let events = [
        event(T0 - DAY, "login"),
        event(T0 + 1_000, "api_key.create"),
        event(T0 + 2_000, "login"),
        event(T0 + DAY + 5, "erasure"),
        event(T0 + 2 * DAY, "login"),
    ];
    for event in &events {
        store.append_audit(event).expect("append_audit");
    }
    let ids_of = |picked: &[usize]| -> Vec<String> {
        picked.iter().rev().map(|i| events[*i].id.clone()).collect()
    };
    let cases = [
        (
            "all, newest first",
            AuditQuery::default(),
            vec![0, 1, 2, 3, 4],
        ),
        (
            "action",
            AuditQuery {
                action: Some("login".to_string()),
                ..Default::default()
            },
            vec![0, 2, 4],
        ),
        (
            "since inclusive, until exclusive",
            AuditQuery {
                since: Some(T0 + 1_000),
                until: Some(T0 + 2 * DAY),
                ..Default::default()
            },
            vec![1, 2, 3],
        ),
    ];
    for (name, query, expect) in cases {
        let page = store.list_audit(&query).expect("list_audit");
        assert_eq!(ids(&page.items, |e| &e.id), ids_of(&expect), "{name}");
    }
    // Pages of two.
    let mut query = AuditQuery {
        limit: 2,
        ..Default::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = store.list_audit(&query).expect("list_audit");
        assert!(page.items.len() <= 2);
        seen.extend(page.items);
        match page.next {
            Some(next) => query.cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(ids(&seen, |e| &e.id), ids_of(&[0, 1, 2, 3, 4]));
    assert_eq!(seen[0], events[4], "every field round-trips");
}

#[test]
fn api_keys_are_stored_listed_and_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let key = |id: &str, name: &str| ApiKeyRecord {
        id: id.to_string(),
        name: name.to_string(),
        scopes: vec!["emails:read".to_string(), "audit:read".to_string()],
        created_at: T0,
        secret_sha256: "cd".repeat(32),
    };
    let one = key("k0000000000000001", "one");
    let two = key("k0000000000000002", "two");
    store.put_api_key(&one).expect("put");
    store.put_api_key(&two).expect("put");
    assert_eq!(store.get_api_key(&one.id).expect("get"), Some(one.clone()));
    assert_eq!(store.get_api_key("k-unknown").expect("get"), None);
    assert_eq!(
        store.list_api_keys().expect("list"),
        vec![one.clone(), two.clone()]
    );
    assert!(store.delete_api_key(&one.id).expect("delete"));
    assert!(!store.delete_api_key(&one.id).expect("delete again"));
    assert_eq!(store.get_api_key(&one.id).expect("get"), None);
    assert_eq!(store.list_api_keys().expect("list"), vec![two]);
}

#[test]
fn settings_round_trip_and_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    assert_eq!(store.get_setting("settings").expect("get"), None);
    let every_byte: Vec<u8> = (0..=255).collect();
    store.put_setting("settings", &every_byte).expect("put");
    assert_eq!(
        store.get_setting("settings").expect("get"),
        Some(every_byte)
    );
    store.put_setting("settings", b"v2").expect("overwrite");
    store.put_setting("other", b"").expect("an empty document");
    assert_eq!(
        store.get_setting("settings").expect("get").as_deref(),
        Some(&b"v2"[..])
    );
    assert_eq!(store.get_setting("other").expect("get"), Some(Vec::new()));
}

#[test]
fn sweep_deletes_expired_records_and_destroys_their_bucket_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = T0 + 30 * HOUR + 30 * MINUTE;
    let retention = Retention {
        metadata: Duration::from_secs(24 * 60 * 60),
        audit: Duration::from_secs(2 * 24 * 60 * 60),
    };
    // Records: cutoff T0 + 6h30m, inside hour 6.
    let expired = [
        record(
            T0 + HOUR + 5 * MINUTE,
            &["old@in.example.test"],
            Status::Delivered,
        ),
        record(
            T0 + 5 * HOUR + 10 * MINUTE,
            &["old@in.example.test"],
            Status::Delivered,
        ),
        record(
            T0 + 6 * HOUR + 10 * MINUTE,
            &["old@in.example.test"],
            Status::Delivered,
        ),
    ];
    let kept = [
        record(
            T0 + 6 * HOUR + 50 * MINUTE,
            &["old@in.example.test"],
            Status::Delivered,
        ),
        record(
            T0 + 29 * HOUR,
            &["young@in.example.test"],
            Status::Delivered,
        ),
    ];
    // Audit: cutoff T0 - 17h30m, inside day -1.
    let expired_events = [event(T0 - 3 * DAY, "login"), event(T0 - 20 * HOUR, "login")];
    let kept_events = [event(T0 - 10 * HOUR, "login"), event(T0 + HOUR, "erasure")];
    {
        let store = open(dir.path());
        put_all(&store, &expired);
        put_all(&store, &kept);
        for event in expired_events.iter().chain(&kept_events) {
            store.append_audit(event).expect("append_audit");
        }
        store.flush().expect("flush");
        let report = store.sweep(at(now), retention).expect("sweep");
        assert_eq!(report.records_deleted, 3, "{report:?}");
        assert_eq!(report.audit_events_deleted, 2, "{report:?}");
        assert_eq!(
            report.buckets_destroyed, 3,
            "hours 1 and 5, day -3: {report:?}"
        );
        let expected_keys = KeyBuckets {
            records: vec![T0 / HOUR + 6, T0 / HOUR + 29],
            audit: vec![T0 / DAY - 1, T0 / DAY],
        };
        assert_eq!(store.key_buckets(), expected_keys);

        for gone in &expired {
            assert_eq!(store.get_record(&gone.id).expect("get"), None, "expired");
        }
        check(
            &store,
            "what is left",
            RecordQuery::default(),
            &[&kept[0], &kept[1]],
        );
        let by_old = RecordQuery {
            recipient: Some("old@in.example.test".to_string()),
            ..Default::default()
        };
        check(&store, "index of what is left", by_old, &[&kept[0]]);
        let events = store
            .list_audit(&AuditQuery::default())
            .expect("list_audit");
        assert_eq!(
            ids(&events.items, |e| &e.id),
            vec![kept_events[1].id.clone(), kept_events[0].id.clone()]
        );

        let again = store.sweep(at(now), retention).expect("sweep again");
        assert_eq!(again, Default::default(), "nothing left to sweep");
    }

    // The bytes left the files: no expired id is in any file, while kept ids still are (which
    // shows the search would find them).
    let db = dir.path().join(DB_DIR);
    for gone in &expired {
        assert_eq!(
            files_containing(&db, gone.id.as_bytes()),
            Vec::<PathBuf>::new(),
            "expired id on disk"
        );
    }
    for event in &expired_events {
        assert_eq!(
            files_containing(&db, event.id.as_bytes()),
            Vec::<PathBuf>::new(),
            "expired event on disk"
        );
    }
    for live in &kept {
        assert!(
            !files_containing(&db, id_tail(&live.id)).is_empty(),
            "kept id"
        );
    }
    // The destroyed keys stay destroyed: the keystore on disk no longer has them.
    let store = open(dir.path());
    assert_eq!(
        store.key_buckets().records,
        vec![T0 / HOUR + 6, T0 / HOUR + 29]
    );
    assert_eq!(store.key_buckets().audit, vec![T0 / DAY - 1, T0 / DAY]);
}

#[test]
fn a_database_copy_taken_before_expiry_is_unreadable_after_it() {
    let live = tempfile::tempdir().expect("tempdir");
    let control = tempfile::tempdir().expect("tempdir");
    let stolen = tempfile::tempdir().expect("tempdir");
    let old: Vec<EmailRecord> = (0..3)
        .map(|i| record(T0 + HOUR + i, &["old@in.example.test"], Status::Delivered))
        .collect();
    let young: Vec<EmailRecord> = (0..2)
        .map(|i| {
            record(
                T0 + 29 * HOUR + i,
                &["young@in.example.test"],
                Status::Delivered,
            )
        })
        .collect();
    {
        let store = open(live.path());
        put_all(&store, &old);
        put_all(&store, &young);
    }
    // Two copies of the database before expiry (a backup, a snapshot).
    copy_dir(&live.path().join(DB_DIR), &control.path().join(DB_DIR));
    copy_dir(&live.path().join(DB_DIR), &stolen.path().join(DB_DIR));

    // Control: with the keys of that time the copy is fully readable.
    fs::copy(
        live.path().join(KEYSTORE_FILE),
        control.path().join(KEYSTORE_FILE),
    )
    .expect("copy");
    {
        let store = open(control.path());
        assert_eq!(
            store.readability().expect("readability"),
            Readability {
                readable: 5,
                shredded: 0,
                damaged: 0
            }
        );
        assert_eq!(
            store.get_record(&old[0].id).expect("get"),
            Some(old[0].clone())
        );
    }

    // Retention ends for the old hour.
    {
        let store = open(live.path());
        let retention = Retention {
            metadata: Duration::from_secs(24 * 60 * 60),
            audit: Duration::from_secs(90 * 24 * 60 * 60),
        };
        let report = store
            .sweep(at(T0 + 30 * HOUR + 30 * MINUTE), retention)
            .expect("sweep");
        assert_eq!((report.records_deleted, report.buckets_destroyed), (3, 1));
    }

    // The copy still holds the old ciphertexts...
    let raw_keys = {
        let path = stolen.path().join(DB_DIR);
        let families = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).expect("list_cf");
        let db = rocksdb::DB::open_cf_for_read_only(
            &rocksdb::Options::default(),
            &path,
            &families,
            false,
        )
        .expect("open the copy raw");
        let cf = db.cf_handle(CF_RECORDS).expect("records family");
        db.iterator_cf(cf, rocksdb::IteratorMode::Start).count()
    };
    assert_eq!(raw_keys, 5, "the copy has every record's ciphertext");
    // ...but with the node's keys after expiry (master key + current keystore) they are gone.
    fs::copy(
        live.path().join(KEYSTORE_FILE),
        stolen.path().join(KEYSTORE_FILE),
    )
    .expect("copy");
    let store = open(stolen.path());
    assert_eq!(
        store.readability().expect("readability"),
        Readability {
            readable: 2,
            shredded: 3,
            damaged: 0
        }
    );
    for record in &old {
        assert_eq!(store.get_record(&record.id).expect("get"), None, "shredded");
    }
    let all: Vec<&EmailRecord> = young.iter().collect();
    check(
        &store,
        "only the young records can be read",
        RecordQuery::default(),
        &all,
    );
    let by_old = RecordQuery {
        recipient: Some("old@in.example.test".to_string()),
        ..Default::default()
    };
    check(&store, "nor found by recipient", by_old, &[]);
}

#[test]
fn no_recipient_subject_or_other_value_is_in_the_files_in_plaintext() {
    let dir = tempfile::tempdir().expect("tempdir");
    let address = "Zebra.Marker-7741@Quokka-Marker.example";
    let subject = "Subject marker 5e1f: Übergrößenträger";
    let markers = [
        address,
        "Zebra.Marker-7741",
        "Quokka-Marker.example",
        subject,
        "Subject marker 5e1f",
        "<msgid-marker-9931@example.org>",
        "route-marker-3107",
        "attachment-marker-4410.pdf",
        "key-name-marker-2291",
        "setting-marker-8832",
        "audit-detail-marker-6620",
    ];
    let marked = |received_at: u64| EmailRecord {
        message_id: Some("<msgid-marker-9931@example.org>".to_string()),
        subject: Some(subject.to_string()),
        route: "*@route-marker-3107.example".to_string(),
        attachments: vec![AttachmentSummary {
            filename: Some("attachment-marker-4410.pdf".to_string()),
            content_type: "application/pdf".to_string(),
            size: 1,
        }],
        ..record(
            received_at,
            &[address, "second@in.example.test"],
            Status::Delivered,
        )
    };
    let mut written = Vec::new();
    {
        let store = open(dir.path());
        // Half reaches SST files, half stays in the write-ahead log.
        for i in 0..20 {
            written.push(marked(T0 + i * MINUTE));
        }
        put_all(&store, &written);
        store
            .put_api_key(&ApiKeyRecord {
                id: "k0000000000000001".to_string(),
                name: "key-name-marker-2291".to_string(),
                scopes: vec![],
                created_at: T0,
                secret_sha256: "ef".repeat(32),
            })
            .expect("put_api_key");
        store
            .put_setting("settings", b"setting-marker-8832")
            .expect("put_setting");
        store
            .append_audit(&AuditEvent {
                detail: Some("audit-detail-marker-6620".to_string()),
                ..event(T0, "erasure")
            })
            .expect("append_audit");
        store.flush().expect("flush");
        for i in 20..40 {
            let record = marked(T0 + i * MINUTE);
            store.put_record(&record).expect("put_record");
            written.push(record);
        }
        assert_eq!(
            store
                .list_records(&RecordQuery {
                    recipient: Some(address.to_string()),
                    limit: 100,
                    ..Default::default()
                })
                .expect("list")
                .items
                .len(),
            40,
            "the store can still find them"
        );
    }
    for marker in markers {
        for variant in [
            marker.to_string(),
            marker.to_lowercase(),
            marker.to_uppercase(),
        ] {
            assert_eq!(
                files_containing(dir.path(), variant.as_bytes()),
                Vec::<PathBuf>::new(),
                "{variant:?} in plaintext"
            );
        }
    }
    // The search does see the files' keys: record ids (plaintext by design) are found in both
    // the SST files (first half) and the write-ahead log (second half).
    for record in [&written[0], &written[39]] {
        assert!(
            !files_containing(dir.path(), id_tail(&record.id)).is_empty(),
            "id {} not found",
            record.id
        );
    }
}

#[test]
fn a_value_moved_to_another_key_does_not_decrypt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = record(T0, &["a@in.example.test"], Status::Delivered);
    let b = record(T0 + 1, &["b@in.example.test"], Status::Rejected);
    {
        let store = open(dir.path());
        put_all(&store, &[a.clone(), b.clone()]);
    }
    {
        let path = dir.path().join(DB_DIR);
        let families = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).expect("list_cf");
        let db =
            rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, &families).expect("open raw");
        let cf = db.cf_handle(CF_RECORDS).expect("records family");
        let key_of = |id: &str| {
            let mut key = (T0 / HOUR).to_be_bytes().to_vec();
            key.extend_from_slice(id.as_bytes());
            key
        };
        let value_a = db
            .get_cf(cf, key_of(&a.id))
            .expect("get")
            .expect("a is stored");
        db.put_cf(cf, key_of(&b.id), value_a)
            .expect("overwrite b with a's value");
    }
    let store = open(dir.path());
    assert!(matches!(
        store.get_record(&b.id),
        Err(StoreError::Corrupt(_))
    ));
    assert_eq!(store.get_record(&a.id).expect("a is untouched"), Some(a));
    assert_eq!(store.readability().expect("readability").damaged, 1);
}

#[test]
fn wrong_master_key_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kept = record(T0, &["a@in.example.test"], Status::Delivered);
    open(dir.path()).put_record(&kept).expect("put");
    match RocksStore::open(dir.path(), &[0x43; 32]) {
        Err(StoreError::MasterKey(message)) => {
            assert!(message.contains("master key"), "{message}");
        }
        Err(other) => panic!("expected a master key error, got {other}"),
        Ok(_) => panic!("a wrong master key opened the store"),
    }
    // Refusing damaged nothing.
    assert_eq!(
        open(dir.path()).get_record(&kept.id).expect("get"),
        Some(kept)
    );
}

#[test]
fn a_database_without_its_keystore_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    open(dir.path())
        .put_record(&record(T0, &["a@in.example.test"], Status::Delivered))
        .expect("put");
    fs::remove_file(dir.path().join(KEYSTORE_FILE)).expect("remove keystore");
    match RocksStore::open(dir.path(), &MASTER_KEY) {
        Err(StoreError::Corrupt(message)) => assert!(message.contains("keystore"), "{message}"),
        Err(other) => panic!("expected a corrupt-store error, got {other}"),
        Ok(_) => panic!("a database without its keys was opened"),
    }
}

#[test]
fn size_grows_as_records_are_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let empty = store.size_bytes();
    assert!(empty > 0, "an empty store still has files");
    let records: Vec<EmailRecord> = (0..200).map(|i| full_record(T0 + i)).collect();
    put_all(&store, &records);
    store.flush().expect("flush");
    assert!(
        store.size_bytes() > empty + 200 * 200,
        "{} vs {empty}",
        store.size_bytes()
    );
}

/// Set for the child process of the `kill -9` test: the store directory it writes into.
const KILL_CHILD_DIR: &str = "MXNODE_STORE_KILL_CHILD_DIR";
/// Acknowledged writes the parent waits for before it kills the child.
const KILL_AFTER_ACKS: usize = 300;
/// The child stops on its own after this, in case the parent died.
const CHILD_LIFETIME: Duration = Duration::from_secs(60);

/// The record the child writes as its `n`th, reconstructible by the parent.
fn kill_test_record(n: u64, id: &str) -> EmailRecord {
    EmailRecord {
        id: id.to_string(),
        subject: Some(format!("burst {n}")),
        ..record(T0 + n * 10, &["burst@in.example.test"], Status::Delivered)
    }
}

/// Not a test of its own: the writer process of `acknowledged_records_survive_kill_9`, which
/// runs this test binary again with `KILL_CHILD_DIR` set. Prints `ack <n> <id>` after each
/// `put_record` returns.
#[test]
fn kill_9_child_writer() {
    let Some(dir) = std::env::var_os(KILL_CHILD_DIR) else {
        return;
    };
    let store = open(Path::new(&dir));
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < CHILD_LIFETIME {
        let id = new_id("rec_", at(T0 + n * 10));
        store
            .put_record(&kill_test_record(n, &id))
            .expect("put_record");
        // println! locks and line-flushes stdout: the line is in the pipe when this returns.
        println!("ack {n} {id}");
        n += 1;
    }
}

#[test]
fn acknowledged_records_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "kill_9_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(KILL_CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the writer");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut acked = Vec::new();
    let mut killed = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read the writer's output");
        let mut words = line.split(' ');
        if words.next() != Some("ack") {
            continue;
        }
        let n: u64 = words
            .next()
            .and_then(|n| n.parse().ok())
            .expect("ack number");
        let id = words.next().expect("ack id").to_string();
        acked.push((n, id));
        if acked.len() == KILL_AFTER_ACKS && !killed {
            // SIGKILL, in the middle of the write burst.
            child.kill().expect("kill -9 the writer");
            killed = true;
        }
    }
    child.wait().expect("reap the writer");
    assert!(
        killed,
        "the writer stopped after {} acks before it was killed",
        acked.len()
    );

    let store = open(dir.path());
    let unique: BTreeSet<&str> = acked.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(unique.len(), acked.len());
    for (n, id) in &acked {
        assert_eq!(
            store.get_record(id).expect("get"),
            Some(kill_test_record(*n, id)),
            "acknowledged record {n} lost"
        );
    }
    let stored = all_pages(
        &store,
        &RecordQuery {
            limit: MAX_PAGE_SIZE,
            ..Default::default()
        },
    );
    assert!(
        stored.len() >= acked.len(),
        "{} stored, {} acknowledged",
        stored.len(),
        acked.len()
    );
}
