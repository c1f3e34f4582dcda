//! Waiting for a future from a plain thread (the CLI's display thread), without any runtime: the
//! storage crate's `block_on` (the workspace has one), with its tests here.

pub(crate) use hyperblow_storage::block_on;

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::oneshot;
    use std::thread;
    use std::time::{Duration, Instant};

    #[test]
    fn returns_value_sent_from_another_thread() {
        let (tx, mut rx) = oneshot::channel::<u32>();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            let _ = tx.send(9);
        });
        assert_eq!(block_on(&mut rx, Some(Duration::from_secs(5))), Some(Ok(9)));
        t.join().unwrap();
    }

    #[test]
    fn times_out_when_nothing_arrives() {
        let (_tx, mut rx) = oneshot::channel::<u32>();
        let start = Instant::now();
        assert_eq!(block_on(&mut rx, Some(Duration::from_millis(30))), None);
        assert!(start.elapsed() >= Duration::from_millis(30));
    }
}
