//! Every redb table of the intake service (CONVENTIONS.md §7). A retired
//! table name is never reused; a changed layout gets a new `_vN` name.
//! Everything here is a read model: it can be deleted and rebuilt from the
//! log.

use redb::TableDefinition;

/// One summary per case: key `tenant/case_id`, value the encoded
/// `casework.intake.v1.Case` (with `breached` unset: it is evaluated at read
/// time).
pub const CASES: TableDefinition<&str, &[u8]> = TableDefinition::new("intake_cases_v1");

/// A tenant's cases in opening order: (tenant, opened_at Unix nanos, case id).
pub const CASES_BY_OPENED: TableDefinition<(&str, i64, &str), ()> =
    TableDefinition::new("intake_cases_by_opened_v1");

/// A customer's cases in opening order: (tenant, customer id, opened_at Unix
/// nanos, case id).
pub const CASES_BY_CUSTOMER: TableDefinition<(&str, &str, i64, &str), ()> =
    TableDefinition::new("intake_cases_by_customer_v1");

/// How far the read model has applied the `CASES` stream: key
/// [`TAIL_CHECKPOINT`], value the last applied stream sequence.
pub const CHECKPOINTS: TableDefinition<&str, u64> = TableDefinition::new("intake_checkpoints_v1");

/// The checkpoint key of the read model's tail of `case.>`.
pub const TAIL_CHECKPOINT: &str = "cases_tail";
