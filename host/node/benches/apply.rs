//! One apply of latest-payload through wasm, against the same FSM compiled natively, both
//! writing to the same LMDB write transaction (so the difference is the wasm cost: a fresh
//! instance, the ABI crossing, fuel metering). Run: `cargo bench -p wraft-host --bench apply`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use heed::types::Bytes;
use heed::{Database, EnvOpenOptions, RwTxn};
use latest_payload::{Command, LatestPayload, Payload};
use wraft_core::abi::EntryContext;
use wraft_core::rng::EntryRng;
use wraft_core::{Format, FsmLimits, ModuleId};
use wraft_guest::{Context, Fsm, Hex32, HexBytes, Host};
use wraft_host::runtime::{CallEnv, EntryPoint, FsmRuntime, KvTarget, Usage};

/// The native FSM's view of the same LMDB keyspace the wasm host imports use.
struct LmdbHost<'t, 'p> {
    txn: &'t mut RwTxn<'p>,
    db: Database<Bytes, Bytes>,
    prefix: [u8; 16],
    ctx: EntryContext,
    rng: EntryRng,
}

impl LmdbHost<'_, '_> {
    fn key(&self, k: &[u8]) -> Vec<u8> {
        [&self.prefix[..], k].concat()
    }
}

impl Host for LmdbHost<'_, '_> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.db
            .get(self.txn, &self.key(key))
            .ok()
            .flatten()
            .map(<[u8]>::to_vec)
    }
    fn put(&mut self, key: &[u8], value: &[u8]) {
        let k = self.key(key);
        self.db.put(self.txn, &k, value).expect("put");
    }
    fn delete(&mut self, key: &[u8]) -> bool {
        let k = self.key(key);
        self.db.delete(self.txn, &k).expect("delete")
    }
    fn scan(&self, _: &[u8], _: Option<&[u8]>, _: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        unimplemented!("latest-payload does not scan")
    }
    fn entry(&self) -> EntryContext {
        self.ctx
    }
    fn random_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }
    fn log(&self, _: i32, _: &str) {}
}

fn command(number: u64) -> Vec<u8> {
    let p = Payload {
        number,
        hash: Hex32([number as u8; 32]),
        parent_hash: Hex32([0; 32]),
        payload: HexBytes(vec![0xab; 256]),
    };
    postcard::to_allocvec(&Command::Commit(p)).expect("encode")
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut opts = EnvOpenOptions::new();
    opts.map_size(1 << 30).max_dbs(2);
    // SAFETY: a fresh temp dir opened once.
    let env = unsafe { opts.open(dir.path()) }.expect("env");
    let mut wtxn = env.write_txn().expect("txn");
    let db: Database<Bytes, Bytes> = env.create_database(&mut wtxn, Some("data")).expect("db");

    let runtime = FsmRuntime::new().expect("runtime");
    let id = ModuleId([1; 32]);
    let lp = runtime
        .load(id, || Ok(wraft_fsm_artifacts::LATEST_PAYLOAD.to_vec()))
        .expect("no fault")
        .expect("valid");
    let probe = runtime
        .load(
            ModuleId([2; 32]),
            || Ok(wraft_fsm_artifacts::PROBE.to_vec()),
        )
        .expect("no fault")
        .expect("valid");
    let limits = FsmLimits::default();
    let mut number = 0u64;
    let mut group = c.benchmark_group("apply");

    // Metered as entries are today (host calls and bytes cost fuel, a quota is kept), and as
    // first-format entries replay (host calls free): the metering's cost.
    for (name, metering) in [
        ("latest_payload_wasm", Format::V2),
        ("latest_payload_wasm_unmetered_host_calls", Format::V1),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                number += 1;
                let ctx = EntryContext {
                    index: number,
                    ..Default::default()
                };
                let env = CallEnv {
                    kv: KvTarget::Write {
                        txn: &mut wtxn,
                        db,
                        prefix: [1; 16],
                        usage: Usage {
                            bytes: 0,
                            quota: Some(limits.storage_bytes),
                        },
                    },
                    ctx,
                    limits,
                    fsm: "bench",
                    metering,
                };
                let out = runtime
                    .call(&lp, EntryPoint::Apply, &command(number), env)
                    .expect("no fault");
                black_box(out.result.expect("applied"));
            })
        });
    }

    group.bench_function("latest_payload_native", |b| {
        b.iter(|| {
            number += 1;
            let ctx = EntryContext {
                index: number,
                ..Default::default()
            };
            let mut host = LmdbHost {
                txn: &mut wtxn,
                db,
                prefix: [2; 16],
                ctx,
                rng: EntryRng::new(number, 0),
            };
            let cmd: Command = postcard::from_bytes(&command(number)).expect("decode");
            let out = LatestPayload::apply(&mut Context::new(&mut host), cmd).expect("applied");
            black_box(postcard::to_allocvec(&out).expect("encode"));
        })
    });

    let nop = postcard::to_allocvec(&probe::Command::Nop).expect("encode");
    group.bench_function("empty_call_wasm", |b| {
        b.iter(|| {
            let env = CallEnv {
                kv: KvTarget::None,
                ctx: EntryContext::default(),
                limits,
                fsm: "bench",
                metering: Format::V2,
            };
            black_box(
                runtime
                    .call(&probe, EntryPoint::Apply, &nop, env)
                    .expect("no fault"),
            );
        })
    });
    group.finish();
    wtxn.abort();
}

criterion_group!(benches, bench);
criterion_main!(benches);
