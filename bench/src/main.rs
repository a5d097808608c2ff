//! dunetrace benchmarks: ingest, processing, alert latency, worker footprint and scaling, each
//! measured against a baseline in the same run. `bash bench/run.sh [--quick]` installs the
//! extension, starts a cluster and runs this binary; see BENCHMARKS.md for the figures.
//!
//! Usage: `dunetrace-bench [--quick] [--host H] [--port P] [--out FILE] [--only a,b,...]
//! [--batches 1,10,100,500] [--clients 1,2]` where the measurements are `ingest`, `process`, `storm`,
//! `latency`, `memory`, `scaling`; `--batches` and `--clients` narrow measurement 1.

mod db;
mod gen;
mod ingest;
mod latency;
mod memory;
mod process;
mod receiver;
mod report;
mod scaling;
mod storm;

use db::Ctx;
use std::time::Instant;

struct Args {
    ctx: Ctx,
    out: Option<String>,
    only: Option<Vec<String>>,
}

fn usage() -> ! {
    eprintln!(
        "usage: dunetrace-bench [--quick] [--host H] [--port P] [--out FILE] \
         [--only ingest,process,latency,memory,scaling] \
         [--batches 1,10,100,500] [--clients 1,2]"
    );
    std::process::exit(2)
}

fn args() -> Args {
    let mut a = Args {
        ctx: Ctx {
            host: "127.0.0.1".into(),
            port: 54350,
            quick: false,
            batches: vec![1, 10, 100, 500],
            clients: vec![1, 2],
        },
        out: None,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--quick" => a.ctx.quick = true,
            "--host" => a.ctx.host = it.next().unwrap_or_else(|| usage()),
            "--port" => {
                a.ctx.port = it
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--batches" | "--clients" => {
                let list: Vec<usize> = it
                    .next()
                    .unwrap_or_else(|| usage())
                    .split(',')
                    .map(|n| n.parse().unwrap_or_else(|_| usage()))
                    .collect();
                if x == "--batches" {
                    a.ctx.batches = list;
                } else {
                    a.ctx.clients = list;
                }
            }
            "--out" => a.out = Some(it.next().unwrap_or_else(|| usage())),
            "--only" => {
                a.only = Some(
                    it.next()
                        .unwrap_or_else(|| usage())
                        .split(',')
                        .map(str::to_string)
                        .collect(),
                )
            }
            _ => usage(),
        }
    }
    a
}

fn main() {
    let a = args();
    let ctx = a.ctx.clone();
    let wants = |m: &str| a.only.as_ref().is_none_or(|o| o.iter().any(|x| x == m));
    let started = Instant::now();
    let mut r = report::Report {
        quick: ctx.quick,
        machine: report::machine(&ctx),
        ..report::Report::default()
    };
    if wants("ingest") {
        eprintln!("1. ingest throughput");
        r.ingest = Some(ingest::measure(&ctx));
    }
    if wants("process") {
        eprintln!("2. processing throughput");
        r.process = Some(process::measure(&ctx));
    }
    if wants("latency") || wants("memory") {
        let recv = receiver::Receiver::start();
        let key = latency::setup(&ctx, &recv);
        if wants("latency") {
            eprintln!("3. alert latency");
            r.latency = Some(latency::measure(&ctx, &recv, &key));
        }
        if wants("memory") {
            eprintln!("4. worker footprint");
            r.memory = Some(memory::measure(&ctx, &recv, &key));
        }
    }
    if wants("scaling") {
        eprintln!("5. scaling with run length");
        r.by_length = Some(scaling::by_run_length(&ctx));
        eprintln!("5. scaling with table size");
        r.by_size = Some(scaling::by_table_size(&ctx));
    }
    if wants("storm") {
        eprintln!("6. alert storm");
        r.storm = Some(storm::measure(&ctx));
    }
    r.seconds = started.elapsed().as_secs_f64();
    let md = report::render(&r);
    match &a.out {
        Some(path) => {
            std::fs::write(path, &md).unwrap_or_else(|e| panic!("write {path}: {e}"));
            eprintln!("wrote {path} ({:.0} s)", r.seconds);
        }
        None => print!("{md}"),
    }
    if r.quick {
        eprintln!("smoke run: figures are not judged against the targets");
        return;
    }
    let missed = report::missed_targets(&r);
    if !missed.is_empty() {
        eprintln!("targets missed: {}", missed.join("; "));
    }
}
