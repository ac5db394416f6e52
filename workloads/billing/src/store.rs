//! Bills, runs, payments, accounts and tenancies in PostgreSQL, a file
//! for each concern: `bills` (bills, their revisions, and the view the API
//! and the pages show), `payments` (payments and defaulters), `runs`, and
//! `accounts` (accounts and tenancies). The rest of the crate calls them
//! as `store::…`, through the names below.

mod accounts;
mod bills;
mod payments;
mod runs;

pub use accounts::{
    Account, TenancyRefused, TenancyRow, accounts, add_tenancy, adopt_namespace_records, create_account, end_tenancy,
    tenancies, tenancy_list,
};
pub use bills::{BillFilter, BillView, LineView, NewBill, Saved, bill, bills, save_bills, status};
pub use payments::{Defaulter, Payment, defaulters, pay, payments};
pub use runs::{RunRow, finish_run, last_scheduled, run, runs, start_run};
