//! Cost of decoding on the hottest ETW path (Kernel-Network per-segment
//! send/receive events), as a ratio to the baseline every record pays
//! anyway: building the `Record` the callback hands to the decoder.
//!
//! `cargo bench -p custos-etw --bench decode`

use custos_etw::providers::{net_event, KERNEL_NETWORK, PROCESS_CLASS};
use custos_etw::{Decoder, DecoderConfig, Record, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

const T0: i64 = 116_444_736_000_000_000 + 1_700_000_000 * 10_000_000;

fn net_record(i: u64) -> Record {
    let mut props = BTreeMap::new();
    let conn = (i % 64) as u16;
    props.insert(Cow::Borrowed("PID"), Value::U32(4242));
    props.insert(Cow::Borrowed("size"), Value::U32(1460));
    props.insert(Cow::Borrowed("saddr"), Value::U32(u32::from_le_bytes([10, 0, 0, 5])));
    props.insert(Cow::Borrowed("daddr"), Value::U32(u32::from_le_bytes([10, 0, 0, 9])));
    props.insert(Cow::Borrowed("sport"), Value::U16(u16::from_le_bytes((40_000 + conn).to_be_bytes())));
    props.insert(Cow::Borrowed("dport"), Value::U16(u16::from_le_bytes(443u16.to_be_bytes())));
    Record {
        provider: KERNEL_NETWORK,
        event_id: if i.is_multiple_of(2) { net_event::SEND } else { net_event::RECV },
        opcode: 0,
        version: 0,
        pid: 4242,
        tid: 1,
        filetime: T0 + i as i64,
        props,
    }
}

fn process_record(i: u64) -> Record {
    let mut props = BTreeMap::new();
    props.insert(Cow::Borrowed("ProcessId"), Value::U32(1000 + (i % 4096) as u32));
    props.insert(Cow::Borrowed("ParentId"), Value::U32(600));
    props.insert(Cow::Borrowed("ImageFileName"), Value::Str("api.exe".into()));
    props.insert(
        Cow::Borrowed("CommandLine"),
        Value::Str(
            r#""C:\Program Files\Api\api.exe" --port 8080 --data "C:\ProgramData\Api\data" -v"#.into(),
        ),
    );
    Record {
        provider: PROCESS_CLASS,
        event_id: 0,
        opcode: 1,
        version: 4,
        pid: 600,
        tid: 1,
        filetime: T0 + i as i64,
        props,
    }
}

fn time(n: u64, mut f: impl FnMut(u64)) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        f(i);
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    for (name, n, make) in [
        ("kernel-network send/recv", 2_000_000u64, net_record as fn(u64) -> Record),
        ("process start (command line split)", 500_000, process_record),
    ] {
        let baseline = time(n, |i| {
            black_box(make(i));
        });
        let mut decoder = Decoder::new(DecoderConfig::default());
        let decode = time(n, |i| {
            black_box(decoder.decode(&make(i)));
        });
        println!(
            "{name}: build record {baseline:.0} ns, build + decode {decode:.0} ns, ratio {:.2}x ({:.1} M records/s decoded)",
            decode / baseline,
            1e3 / decode
        );
    }
}
