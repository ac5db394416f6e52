//! Prints the broker plugin's C header, generated from this crate's
//! constants (see `fleetward_protocol::broker`). From the workspace root:
//!
//! ```sh
//! cargo run -q -p fleetward-protocol --bin fleetward-c-header > workloads/mosquitto/plugin/fleetward_protocol.h
//! ```

fn main() {
    print!("{}", fleetward_protocol::broker::c_header());
}
