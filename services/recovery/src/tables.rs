//! Every redb table of the recovery service (CONVENTIONS.md §7). All of
//! them are read models rebuilt from the log by the views feed; a retired
//! table name is never reused.

use redb::TableDefinition;

/// Granted compensations per `tenant|YYYY-MM-DD|currency` (UTC day) →
/// minor units: the daily-budget view.
pub const BUDGET: TableDefinition<&str, u64> = TableDefinition::new("budget_v1");

/// Open recoveries per `tenant|case_id|recovery (10 digits)` → JSON
/// [`crate::views::OpenRec`].
pub const OPEN_RECOVERIES: TableDefinition<&str, &str> = TableDefinition::new("open_recoveries_v1");

/// Compensations waiting for a person per `tenant|case_id|compensation_id`
/// → JSON [`crate::views::PendingRec`].
pub const PENDING_APPROVALS: TableDefinition<&str, &str> =
    TableDefinition::new("pending_approvals_v1");

/// The feed's checkpoint: `feed` → the last stream sequence applied.
pub const CHECKPOINT: TableDefinition<&str, u64> = TableDefinition::new("views_checkpoint_v1");
