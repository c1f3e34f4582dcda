//! The mainline DHT (BEP 5): a sans-IO Kademlia node that finds peers for a torrent without a tracker.
//!
//! - [`krpc`]: the KRPC codec (queries, responses, errors; compact IPv4 and IPv6 node and peer
//!   formats, BEP 32; `ro` of BEP 43; `ip` of BEP 42).
//! - [`id`]: node ids, the XOR metric, BEP 42 ids bound to the node's address.
//! - [`table`]: the routing table: k = 8 buckets split around our id, good / questionable / bad by the
//!   15-minute rules, replacement caches, refresh targets.
//! - [`store`]: announce tokens (a rotating secret over the querier's IP, valid 5 to 10 minutes) and
//!   the capped, expiring store of announced peers.
//! - [`node`]: [`Dht`], one node: answers queries (rate-limited per address and overall, replies
//!   bounded in size), runs iterative `find_node` / `get_peers` lookups with bounded parallelism that stop
//!   when the k closest nodes have answered, announces, keeps its table fresh, saves and loads its state.
//!
//! Like every protocol in the core it reads no clock and opens no socket: the driver feeds it datagrams
//! and the time, and sends what it yields. With the `testkit` feature (and in this crate's tests),
//! `sim` runs thousands of nodes over an in-memory network with latency, loss and a virtual clock.

pub mod id;
pub mod krpc;
pub mod node;
#[cfg(any(test, feature = "testkit"))]
pub mod sim;
pub mod store;
pub mod table;

pub use id::NodeId;
pub use krpc::NodeInfo;
pub use node::{
    Dht, DhtConfig, DhtEvent, DhtStats, LookupError, LookupId, LookupKind, LookupSummary,
    StateError,
};
#[cfg(test)]
mod tests;
