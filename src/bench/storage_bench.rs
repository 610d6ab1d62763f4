//! `cairn bench storage URL`: what the storage wrapper costs over raw object_store calls.
//!
//! Each round writes `objects` objects of `object_mib` MiB with `in_flight` requests at once,
//! twice: through `Store::put_blob` (blake3 + put-if-absent) and as raw `ObjectStore::put` calls
//! on the same backend; then reads them back through `Store::get_blob` (get + re-hash) and raw
//! `get`. Rounds alternate wrapper and raw so drift on a noisy machine hits both alike; the
//! figures are medians over rounds. blake3 throughput is measured on the same buffers.

use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use object_store::{ObjectStoreExt, PutPayload};
use storage::BlobId;

use super::median;
use crate::Outcome;
use crate::store_cmd::absolute_url;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Store URL: file:///abs/dir, s3://bucket/prefix, memory://
    url: String,
    /// Size of one object, in MiB.
    #[arg(long, default_value_t = 8)]
    object_mib: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// Objects per round.
    #[arg(long, default_value_t = 8)]
    objects: usize,
    /// Rounds (each measures wrapper and raw once).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

fn payloads(count: usize, len: usize, round: usize) -> Vec<Bytes> {
    (0..count)
        .map(|i| {
            // Distinct content per object and round (so blob ids differ), cheap to make.
            let mut x = (round as u64) << 32 | i as u64 | 1;
            let mut v = Vec::with_capacity(len);
            while v.len() < len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.extend_from_slice(&x.to_le_bytes());
            }
            v.truncate(len);
            Bytes::from(v)
        })
        .collect()
}

fn mib_per_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / secs
}

pub async fn run(args: Args) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        args.objects > 0 && args.rounds > 0 && args.in_flight > 0 && args.object_mib > 0,
        "all sizes must be > 0"
    );
    let url = absolute_url(&args.url)?;
    let root = storage::open(&url).await.with_context(|| format!("opening {url}"))?;
    let store = root.scoped(&format!("_cairn-bench/{:016x}", rand::random::<u64>()))?;
    let len = args.object_mib << 20;
    let total = len * args.objects;
    println!(
        "bench storage: {} objects x {} MiB, {} in flight, {} rounds on {}",
        args.objects, args.object_mib, args.in_flight, args.rounds, url
    );
    let (mut put_w, mut put_r, mut get_w, mut get_r, mut hash) = (vec![], vec![], vec![], vec![], vec![]);
    let result: anyhow::Result<()> = async {
        for round in 0..args.rounds {
            let data = payloads(args.objects, len, round);

            let t = Instant::now();
            for b in &data {
                std::hint::black_box(blake3::hash(b));
            }
            hash.push(total as f64 / t.elapsed().as_secs_f64() / 1e9);

            let t = Instant::now();
            let ids: Vec<BlobId> = stream::iter(data.iter().cloned())
                .map(|b| store.put_blob(b))
                .buffered(args.in_flight)
                .try_collect()
                .await?;
            put_w.push(mib_per_s(total, t.elapsed().as_secs_f64()));

            let raw = store.raw().clone();
            let paths: Vec<_> =
                (0..args.objects).map(|i| store.path(&format!("raw/{round}/{i}"))).collect::<Result<_, _>>()?;
            let t = Instant::now();
            stream::iter(data.iter().cloned().zip(paths.iter().cloned()))
                .map(|(b, p)| {
                    let raw = raw.clone();
                    async move { raw.put(&p, PutPayload::from(b)).await }
                })
                .buffered(args.in_flight)
                .try_collect::<Vec<_>>()
                .await?;
            put_r.push(mib_per_s(total, t.elapsed().as_secs_f64()));

            let t = Instant::now();
            let got: Vec<Bytes> = stream::iter(ids.iter().copied())
                .map(|id| store.get_blob(id, len as u64))
                .buffered(args.in_flight)
                .try_collect()
                .await?;
            get_w.push(mib_per_s(total, t.elapsed().as_secs_f64()));
            anyhow::ensure!(got == data, "read back different bytes");

            let t = Instant::now();
            let got: Vec<Bytes> = stream::iter(paths.iter().cloned())
                .map(|p| {
                    let raw = raw.clone();
                    async move { raw.get(&p).await?.bytes().await }
                })
                .buffered(args.in_flight)
                .try_collect()
                .await?;
            get_r.push(mib_per_s(total, t.elapsed().as_secs_f64()));
            anyhow::ensure!(got == data, "raw read back different bytes");
            eprintln!(
                "  round {}/{}: put {:.0} vs raw {:.0} MiB/s, get {:.0} vs raw {:.0} MiB/s",
                round + 1,
                args.rounds,
                put_w[round],
                put_r[round],
                get_w[round],
                get_r[round]
            );
        }
        Ok(())
    }
    .await;
    // Remove what the benchmark wrote, whatever happened.
    if let Ok(objects) = store.list("", None).await {
        for o in objects {
            let _ = store.delete(&o.key).await;
        }
    }
    result?;
    let (pw, pr, gw, gr, h) = (median(put_w), median(put_r), median(get_w), median(get_r), median(hash));
    println!(
        "bench storage: put_mib_per_s={pw:.1} put_raw_mib_per_s={pr:.1} put_ratio={:.3} get_mib_per_s={gw:.1} get_raw_mib_per_s={gr:.1} get_ratio={:.3} blake3_gb_per_s={h:.2} object_bytes={len} in_flight={}",
        pw / pr,
        gw / gr,
        args.in_flight
    );
    Ok(Outcome::Ok)
}
