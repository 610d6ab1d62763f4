//! Rough decode + aggregate throughput on a GPT-2-small-shaped model (124M parameters), synthetic
//! updates (random distinct indices, random signs). Not a consensus path: timing only.
//!
//! `cargo run --release -p cairn-verify --example aggregate -- [updates] [topk] [sign|int8|bf16] [encode]`

use std::time::Instant;

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use verify::chunk::Grid;
use verify::wire::encoded_len;
use verify::{
    Compression, Expected, Header, Hyper, Layout, NormClip, Ratio, Round, RunId, Schedule, State, TensorSpec, Update,
    ValueEncoding, Values, WorkerKey, apply, decode,
};

fn gpt2_small() -> Layout {
    let mut t = vec![
        TensorSpec { name: "wte".into(), shape: vec![50257, 768] },
        TensorSpec { name: "wpe".into(), shape: vec![1024, 768] },
        TensorSpec { name: "ln_f.weight".into(), shape: vec![768] },
        TensorSpec { name: "ln_f.bias".into(), shape: vec![768] },
    ];
    for l in 0..12 {
        for (n, s) in [
            ("attn.qkv.weight", vec![768, 2304]),
            ("attn.qkv.bias", vec![2304]),
            ("attn.proj.weight", vec![768, 768]),
            ("attn.proj.bias", vec![768]),
            ("mlp.fc.weight", vec![768, 3072]),
            ("mlp.fc.bias", vec![3072]),
            ("mlp.proj.weight", vec![3072, 768]),
            ("mlp.proj.bias", vec![768]),
            ("ln_1.weight", vec![768]),
            ("ln_1.bias", vec![768]),
            ("ln_2.weight", vec![768]),
            ("ln_2.bias", vec![768]),
        ] {
            t.push(TensorSpec { name: format!("h.{l}.{n}"), shape: s });
        }
    }
    Layout::new(t).unwrap()
}

fn synthetic(layout: &Layout, header: Header, rng: &mut ChaCha8Rng) -> Update {
    let comp = header.compression;
    let tensors = comp
        .grids(layout)
        .iter()
        .map(|g: &Grid| {
            let kept = g.kept(comp.topk) as usize;
            let n = g.coefficients() as usize;
            let mut idx = Vec::with_capacity(g.chunks() as usize * kept);
            let mut chunk = Vec::with_capacity(kept);
            for _ in 0..g.chunks() {
                chunk.clear();
                while chunk.len() < kept {
                    let i = rng.random_range(0..n) as u16;
                    if !chunk.contains(&i) {
                        chunk.push(i);
                    }
                }
                chunk.sort_unstable();
                idx.extend_from_slice(&chunk);
            }
            let m = idx.len();
            let values = match comp.values {
                ValueEncoding::Sign => Values::Sign((0..m).map(|_| rng.next_u32() & 1 == 1).collect()),
                ValueEncoding::Int8 => Values::Int8 {
                    scales: (0..g.chunks()).map(|_| 0.001).collect(),
                    q: (0..m).map(|_| rng.random_range(-127..=127)).collect(),
                },
                ValueEncoding::Bf16 => Values::Bf16(
                    (0..m).map(|_| half::bf16::from_f32(rng.random_range(-0.01..0.01)).to_bits()).collect(),
                ),
            };
            (idx, values)
        })
        .collect();
    Update::new(header, layout, tensors).unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u8 = args.get(1).map_or(16, |a| a.parse().unwrap());
    let topk: u16 = args.get(2).map_or(4, |a| a.parse().unwrap());
    let values = match args.get(3).map_or("sign", String::as_str) {
        "int8" => ValueEncoding::Int8,
        "bf16" => ValueEncoding::Bf16,
        _ => ValueEncoding::Sign,
    };
    let layout = gpt2_small();
    let params = layout.elements();
    let comp = Compression { chunk_size: 64, topk, values };
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut state = State::zeros(layout.clone());
    for d in state.data_mut() {
        for v in d.iter_mut() {
            *v = rng.random_range(-0.02..0.02);
        }
    }
    let t = Instant::now();
    let base = state.hash();
    let hash_s = t.elapsed().as_secs_f64();
    let run = RunId([1; 32]);
    let blobs: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let header = Header {
                run,
                round: Round(100),
                base,
                worker: WorkerKey([i; 32]),
                layout: layout.hash(),
                compression: comp,
            };
            synthetic(&layout, header, &mut rng).to_bytes()
        })
        .collect();
    let bytes = encoded_len(&layout, &comp);
    let hyper = Hyper {
        compression: comp,
        schedule: Schedule::Constant { lr: Ratio::new(1, 1000) },
        weight_decay: Ratio::new(1, 10),
        clip: NormClip::Median,
    };
    let t = Instant::now();
    let updates: Vec<Update> = blobs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let e = Expected {
                run,
                round: Round(100),
                base,
                worker: WorkerKey([i as u8; 32]),
                layout: &layout,
                compression: comp,
            };
            decode(b, &e).unwrap()
        })
        .collect();
    let decode_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    apply(&mut state, Round(100), &updates, &hyper).unwrap();
    let apply_s = t.elapsed().as_secs_f64();
    println!(
        "params {params}  updates {n}  chunk 64  top-k {topk}  {values:?}  threads {}",
        rayon::current_num_threads()
    );
    println!("bytes/update {bytes}  dense fp32 {}  ratio {:.0}x", params * 4, (params * 4) as f64 / bytes as f64);
    println!(
        "decode {decode_s:.3}s  aggregate+apply {apply_s:.3}s  total {:.3}s  => {:.3e} params/s  (state hash {hash_s:.3}s)",
        decode_s + apply_s,
        params as f64 / (decode_s + apply_s)
    );
    println!("state {}", state.hash());
    if args.get(4).map(String::as_str) != Some("encode") {
        return;
    }
    // The reference encoder on one full-size momentum (the trainer encodes on the GPU instead).
    let momentum = State::from_parts(layout.clone(), state.data().to_vec()).unwrap();
    let header =
        Header { run, round: Round(101), base, worker: WorkerKey([0; 32]), layout: layout.hash(), compression: comp };
    let t = Instant::now();
    let u = verify::encode(&momentum, &header).unwrap();
    let encode_s = t.elapsed().as_secs_f64();
    println!("reference encode of one update {encode_s:.3}s => {:.3e} params/s", params as f64 / encode_s);
    assert_eq!(u.to_bytes().len() as u64, bytes);
}
