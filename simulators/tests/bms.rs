//! bms against a real third-party Modbus server (pymodbus) holding known
//! values at castpoint's register map: reads decode to the right points and
//! writes land in the server's tables.

use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BMS: &str = env!("CARGO_BIN_EXE_bms");

const SERVER: &str = r#"
import asyncio, struct, sys
from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import StartAsyncTcpServer
ir = [0] * 200
ir[0] = 12
hi, lo = struct.unpack(">HH", struct.pack(">f", 12.5))
ir[100], ir[101] = hi, lo
hr = [0] * 200
hr[0:7] = [1, 2, 3, 1, 1, 1, 1]
hr[100:102] = [2, 3]
co = [True, False, False, False] + [False] * 16
# Blocks start at 1: pymodbus maps request address 0 to block index 1.
dev = ModbusDeviceContext(ir=ModbusSequentialDataBlock(1, ir), hr=ModbusSequentialDataBlock(1, hr),
                          co=ModbusSequentialDataBlock(1, co), di=ModbusSequentialDataBlock(1, [0] * 20))
ctx = ModbusServerContext(devices=dev, single=True)
asyncio.run(StartAsyncTcpServer(context=ctx, address=("127.0.0.1", int(sys.argv[1]))))
"#;

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pymodbus() -> Option<(Killed, String)> {
    let ok = Command::new("python3")
        .args(["-c", "import pymodbus"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var_os("CASTPOINT_SKIP_PEERS").is_some() {
            return None;
        }
        panic!("pymodbus not installed (pip install pymodbus, or CASTPOINT_SKIP_PEERS=1)");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let child = Command::new("python3")
        .args(["-c", SERVER, &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "pymodbus server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some((Killed(child), addr))
}

fn bms(args: &[&str]) -> String {
    let out = Command::new(BMS).args(args).output().expect("bms");
    assert!(
        out.status.success(),
        "bms {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn modbus_values(addr: &str) -> (Value, Value) {
    let out = bms(&[
        "--modbus", addr, "poll", "--only", "modbus", "--json", "-d", "0.5", "--rate", "4",
    ]);
    let v: Value = serde_json::from_str(&out).expect("json");
    let points = v["points"].clone();
    let timing = v["timings"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["protocol"] == "modbus"))
        .cloned()
        .expect("modbus timing");
    (points, timing)
}

fn point<'a>(points: &'a Value, id: &str) -> &'a str {
    points
        .as_array()
        .and_then(|a| a.iter().find(|p| p["point"] == id))
        .and_then(|p| p["modbus"].as_str())
        .unwrap_or_else(|| panic!("{id} missing"))
}

#[test]
fn bms_reads_and_writes_modbus_on_pymodbus() {
    let Some((_server, addr)) = pymodbus() else {
        return;
    };
    let (p, timing) = modbus_values(&addr);
    assert_eq!(point(&p, "active_streams"), "12.5", "f32 ABCD at 30101");
    assert_eq!(point(&p, "stream_enable"), "true");
    assert_eq!(point(&p, "recording_enable"), "false");
    assert_eq!(point(&p, "server_status"), "1");
    assert_eq!(point(&p, "stream_status"), "2");
    assert_eq!(point(&p, "input_select"), "2");
    assert_eq!(timing["errors"], 0);
    assert!(timing["requests"].as_u64().unwrap_or(0) >= 5);

    assert_eq!(
        bms(&["--modbus", &addr, "write", "modbus", "coil", "2", "on"]).trim(),
        "ok"
    );
    assert_eq!(
        bms(&["--modbus", &addr, "write", "modbus", "holding", "40101", "7"]).trim(),
        "ok"
    );
    let (p, _) = modbus_values(&addr);
    assert_eq!(point(&p, "recording_enable"), "true");
    assert_eq!(point(&p, "input_select"), "7");

    // Refusals are errors with a message, not panics.
    let out = Command::new(BMS)
        .args(["--modbus", &addr, "write", "modbus", "coil", "0", "on"])
        .output()
        .expect("bms");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("numbered from 1"));
}
