//! [`MemoryStore`]: the in-memory twin of the RocksDB store, for tests of the code above the
//! store (the API controller, delivery bookkeeping). Same semantics as `rocks`: listings newest
//! first by id (ids are time-ordered), stable cursor pagination, the same filters,
//! case-insensitive recipient match, erasure counts, retention sweeps.
//!
//! It must never be used by a running node: nothing here survives the process, and nothing is
//! encrypted (there is no disk to protect). It holds the same fields as the real store, so
//! tests built on it still see only what DESIGN §6 allows.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use super::{
    ApiKeyRecord, AuditEvent, AuditQuery, DEFAULT_PAGE_SIZE, EmailRecord, MAX_PAGE_SIZE, Page,
    RecordQuery, Retention, Store, StoreError, SweepReport, unix_ms,
};

/// Prefix of every cursor this store hands out; anything else is [`StoreError::BadCursor`].
const CURSOR_PREFIX: &str = "m1.";

/// The in-memory store. Cheap to create; one per test.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Records by id; ids are time-ordered, so reverse iteration is newest first.
    records: BTreeMap<String, EmailRecord>,
    /// Audit events by id, time-ordered like records.
    audit: BTreeMap<String, AuditEvent>,
    keys: BTreeMap<String, ApiKeyRecord>,
    settings: BTreeMap<String, Vec<u8>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic in another test thread must not cascade: the data is still consistent,
        // since every mutation below is a single map operation.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The id a cursor points after, or `BadCursor`.
fn decode_cursor(cursor: &Option<String>) -> Result<Option<&str>, StoreError> {
    match cursor {
        None => Ok(None),
        Some(text) => match text.strip_prefix(CURSOR_PREFIX) {
            Some(id)
                if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                Ok(Some(id))
            }
            _ => Err(StoreError::BadCursor),
        },
    }
}

fn page_size(limit: usize) -> usize {
    match limit {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// One page of `map`'s values, newest (largest id) first, strictly after the cursor's id, with
/// the cursor of the next page when more values pass `keep`.
fn page<T: Clone>(
    map: &BTreeMap<String, T>,
    cursor: &Option<String>,
    limit: usize,
    id_of: impl Fn(&T) -> &str,
    keep: impl Fn(&T) -> bool,
) -> Result<Page<T>, StoreError> {
    let after = decode_cursor(cursor)?;
    let limit = page_size(limit);
    let upper = match after {
        Some(id) => Bound::Excluded(id),
        None => Bound::Unbounded,
    };
    let range = map.range::<str, _>((Bound::Unbounded, upper));
    let mut matching = range.rev().map(|(_, value)| value).filter(|v| keep(v));
    let items: Vec<T> = matching.by_ref().take(limit).cloned().collect();
    let next = match (matching.next(), items.last()) {
        (Some(_), Some(last)) => Some(format!("{CURSOR_PREFIX}{}", id_of(last))),
        _ => None,
    };
    Ok(Page { items, next })
}

fn recipient_matches(record: &EmailRecord, address: &str) -> bool {
    let wanted = address.trim().to_lowercase();
    record
        .recipients
        .iter()
        .any(|r| r.trim().to_lowercase() == wanted)
}

fn in_window(time: u64, since: Option<u64>, until: Option<u64>) -> bool {
    since.is_none_or(|s| time >= s) && until.is_none_or(|u| time < u)
}

impl Store for MemoryStore {
    fn put_record(&self, record: &EmailRecord) -> Result<(), StoreError> {
        self.lock()
            .records
            .insert(record.id.clone(), record.clone());
        Ok(())
    }

    fn get_record(&self, id: &str) -> Result<Option<EmailRecord>, StoreError> {
        Ok(self.lock().records.get(id).cloned())
    }

    fn list_records(&self, query: &RecordQuery) -> Result<Page<EmailRecord>, StoreError> {
        let inner = self.lock();
        page(
            &inner.records,
            &query.cursor,
            query.limit,
            |r| &r.id,
            |r| {
                query.status.is_none_or(|s| r.status == s)
                    && query
                        .recipient
                        .as_deref()
                        .is_none_or(|a| recipient_matches(r, a))
                    && in_window(r.received_at, query.since, query.until)
            },
        )
    }

    fn delete_record(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.lock().records.remove(id).is_some())
    }

    fn erase_recipient(&self, address: &str) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let before = inner.records.len();
        inner.records.retain(|_, r| !recipient_matches(r, address));
        Ok((before - inner.records.len()) as u64)
    }

    fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.lock().audit.insert(event.id.clone(), event.clone());
        Ok(())
    }

    fn list_audit(&self, query: &AuditQuery) -> Result<Page<AuditEvent>, StoreError> {
        let inner = self.lock();
        page(
            &inner.audit,
            &query.cursor,
            query.limit,
            |e| &e.id,
            |e| {
                query.action.as_deref().is_none_or(|a| e.action == a)
                    && in_window(e.time, query.since, query.until)
            },
        )
    }

    fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.lock().keys.insert(key.id.clone(), key.clone());
        Ok(())
    }

    fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(self.lock().keys.get(id).cloned())
    }

    fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        Ok(self.lock().keys.values().cloned().collect())
    }

    fn delete_api_key(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.lock().keys.remove(id).is_some())
    }

    fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().settings.get(name).cloned())
    }

    fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.lock()
            .settings
            .insert(name.to_string(), value.to_vec());
        Ok(())
    }

    fn delete_setting(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.lock().settings.remove(name).is_some())
    }

    fn sweep(&self, now: SystemTime, retention: Retention) -> Result<SweepReport, StoreError> {
        let now = unix_ms(now);
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let (metadata, audit) = (ms(retention.metadata), ms(retention.audit));
        let mut inner = self.lock();
        let records_before = inner.records.len();
        inner
            .records
            .retain(|_, r| r.received_at.saturating_add(metadata) > now);
        let audit_before = inner.audit.len();
        inner
            .audit
            .retain(|_, e| e.time.saturating_add(audit) > now);
        Ok(SweepReport {
            records_deleted: (records_before - inner.records.len()) as u64,
            audit_events_deleted: (audit_before - inner.audit.len()) as u64,
            // No time buckets and no keys here: nothing is encrypted in memory.
            buckets_destroyed: 0,
        })
    }

    fn size_bytes(&self) -> u64 {
        let inner = self.lock();
        // Roughly what the values would take serialised; only `/metrics` reads this.
        let records: usize = inner
            .records
            .values()
            .map(|r| serde_json::to_vec(r).map(|v| v.len()).unwrap_or(0))
            .sum();
        let audit: usize = inner
            .audit
            .values()
            .map(|e| serde_json::to_vec(e).map(|v| v.len()).unwrap_or(0))
            .sum();
        (records + audit) as u64
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::store::Status;

    /// A record received at `ms` with an id that sorts by that time, as `new_id` makes them.
    fn record(ms: u64, recipient: &str, status: Status) -> EmailRecord {
        EmailRecord {
            id: format!("rec_{ms:012x}{:020x}", ms),
            delivery_id: format!("msg_{ms:032x}"),
            message_id: Some(format!("<{ms}@example.org>")),
            recipients: vec![recipient.to_string()],
            route: "*@in.example.test".into(),
            subject: Some(format!("subject {ms}")),
            received_at: ms,
            delivered_at: (status == Status::Delivered).then_some(ms + 5),
            status,
            smtp_code: 250,
            webhook_status: Some(200),
            webhook_latency_ms: Some(5),
            attachments: Vec::new(),
            size: 100,
            dmarc: None,
        }
    }

    fn store_with(records: &[EmailRecord]) -> MemoryStore {
        let store = MemoryStore::new();
        for r in records {
            store.put_record(r).expect("memory store never fails");
        }
        store
    }

    /// Every page of a listing, following cursors, as lists of receive times.
    fn all_pages(store: &MemoryStore, query: RecordQuery) -> Vec<Vec<u64>> {
        let mut pages = Vec::new();
        let mut query = query;
        loop {
            let page = store.list_records(&query).expect("lists");
            pages.push(page.items.iter().map(|r| r.received_at).collect());
            match page.next {
                Some(next) => query.cursor = Some(next),
                None => return pages,
            }
        }
    }

    #[test]
    fn listing_is_newest_first_in_pages_that_follow_the_cursor() {
        let store = store_with(
            &(1..=5)
                .map(|t| record(t, "a@x.test", Status::Delivered))
                .collect::<Vec<_>>(),
        );
        let query = RecordQuery {
            limit: 2,
            ..RecordQuery::default()
        };
        assert_eq!(
            all_pages(&store, query),
            vec![vec![5, 4], vec![3, 2], vec![1]]
        );
    }

    #[test]
    fn pages_do_not_shift_when_records_arrive_between_requests() {
        let store = store_with(
            &(1..=4)
                .map(|t| record(t, "a@x.test", Status::Delivered))
                .collect::<Vec<_>>(),
        );
        let first = store
            .list_records(&RecordQuery {
                limit: 2,
                ..RecordQuery::default()
            })
            .expect("lists");
        store
            .put_record(&record(10, "a@x.test", Status::Delivered))
            .expect("puts");
        let second = store
            .list_records(&RecordQuery {
                limit: 2,
                cursor: first.next,
                ..RecordQuery::default()
            })
            .expect("lists");
        let times: Vec<u64> = second.items.iter().map(|r| r.received_at).collect();
        assert_eq!(times, vec![2, 1]);
        assert_eq!(
            second.next, None,
            "an exactly full last page has no next cursor"
        );
    }

    #[test]
    fn filters_combine_and_recipients_match_case_insensitively() {
        let store = store_with(&[
            record(1, "Bob@In.Example.Test", Status::Delivered),
            record(2, "bob@in.example.test", Status::Tempfailed),
            record(3, "carol@in.example.test", Status::Delivered),
            record(4, "BOB@IN.EXAMPLE.TEST", Status::Delivered),
        ]);
        let check = |query: RecordQuery, expect: Vec<u64>| {
            let times: Vec<u64> = all_pages(&store, query.clone()).concat();
            assert_eq!(times, expect, "{query:?}");
        };
        let bob = Some("bob@in.example.test".to_string());
        check(
            RecordQuery {
                recipient: bob.clone(),
                ..RecordQuery::default()
            },
            vec![4, 2, 1],
        );
        check(
            RecordQuery {
                recipient: bob.clone(),
                status: Some(Status::Delivered),
                ..RecordQuery::default()
            },
            vec![4, 1],
        );
        check(
            RecordQuery {
                since: Some(2),
                until: Some(4),
                ..RecordQuery::default()
            },
            vec![3, 2],
        );
    }

    #[test]
    fn erasure_counts_and_removes_every_record_of_the_recipient() {
        let store = store_with(&[
            record(1, "bob@in.example.test", Status::Delivered),
            record(2, "carol@in.example.test", Status::Delivered),
            record(3, "Bob@in.example.test", Status::Rejected),
        ]);
        assert_eq!(
            store
                .erase_recipient("BOB@in.example.test")
                .expect("erases"),
            2
        );
        let left = all_pages(&store, RecordQuery::default()).concat();
        assert_eq!(left, vec![2]);
        assert_eq!(
            store
                .erase_recipient("bob@in.example.test")
                .expect("erases"),
            0
        );
    }

    #[test]
    fn sweep_removes_what_retention_has_ended() {
        let store = store_with(&[
            record(1_000, "a@x.test", Status::Delivered),
            record(5_000, "a@x.test", Status::Delivered),
        ]);
        let event = AuditEvent {
            id: "aud_000000000001".into(),
            time: 1_000,
            actor: "cli".into(),
            action: "api_key.create".into(),
            target: None,
            detail: None,
        };
        store.append_audit(&event).expect("appends");
        let report = store
            .sweep(
                UNIX_EPOCH + Duration::from_millis(6_000),
                Retention {
                    metadata: Duration::from_millis(2_000),
                    audit: Duration::from_millis(10_000),
                },
            )
            .expect("sweeps");
        assert_eq!(report.records_deleted, 1);
        assert_eq!(report.audit_events_deleted, 0);
        assert_eq!(
            all_pages(&store, RecordQuery::default()).concat(),
            vec![5_000]
        );
    }

    #[test]
    fn foreign_cursors_are_refused() {
        let store = MemoryStore::new();
        for cursor in ["", "garbage", "m1.", "m1.a/b"] {
            let result = store.list_records(&RecordQuery {
                cursor: Some(cursor.into()),
                ..RecordQuery::default()
            });
            assert!(matches!(result, Err(StoreError::BadCursor)), "{cursor:?}");
        }
    }
}
