//! The `vault-bench` load tool, run for a moment against the real server:
//! it must drive both the vault and its ceiling without errors and report
//! figures that agree with the vault's own metrics.

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_tool_drives_the_vault_and_its_ceiling() {
    let v = TestVault::start().await;
    let bin = vault_bin().with_file_name("vault-bench");
    let endpoint = format!("https://127.0.0.1:{}", v.api.port());
    let ops = v.ops.to_string();
    let dir = v.dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin)
            .args([
                "--endpoint",
                &endpoint,
                "--scenario",
                "mixed",
                "--connections",
                "2",
                "--seconds",
                "1",
                "--ceiling",
                "--json",
                "--ops",
                &ops,
            ])
            .arg("--dev")
            .arg(dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    // The tool's own scrape of /metrics around the vault run agrees.
    assert_eq!(
        lines[2]["metrics_requests_counted"], lines[2]["requests_sent"],
        "{lines:?}"
    );
    // The vault timed each request it counted, the tail figures come with
    // the run, and the run's writes went through the committer.
    let m = &lines[2];
    assert_eq!(
        m["vault_requests_timed"], m["metrics_requests_counted"],
        "{m}"
    );
    assert!(m["vault_p99_ms_at_most"].as_f64().unwrap() > 0.0, "{m}");
    assert!(
        m["vault_requests_over_6_4_ms"].as_u64().unwrap() <= m["requests_sent"].as_u64().unwrap(),
        "{m}"
    );
    let writes = m["store_writes"].as_u64().unwrap();
    assert!(writes > 0, "{m}");
    assert!(
        m["store_writes_over_25_6_ms"].as_u64().unwrap() <= writes,
        "{m}"
    );
    // The means Little's law needs: each request's time inside the vault
    // lies within the tool's time for it, so the vault's mean cannot exceed
    // the tool's; every write carried requests.
    let inside = m["vault_request_mean_ms"].as_f64().unwrap();
    let tool = lines[1]["mean_ms"].as_f64().unwrap();
    assert!(inside > 0.0 && inside <= tool, "{m} {}", lines[1]);
    assert!(m["store_write_mean_ms"].as_f64().unwrap() > 0.0, "{m}");
    assert!(m["requests_per_store_write"].as_f64().unwrap() > 0.0, "{m}");
    // The run's requests, and one per connection to open it before the
    // clock started.
    assert_eq!(
        lines[2]["requests_sent"].as_u64().unwrap(),
        lines[1]["requests"].as_u64().unwrap() + 2
    );
    assert_eq!(lines[0]["target"], "ceiling");
    assert_eq!(lines[1]["target"], "vault");
    for l in &lines[..2] {
        assert!(l["requests"].as_u64().unwrap() > 10, "{l}");
        assert_eq!(l["errors"], 0, "{l}");
    }
    assert!(lines[3]["ratio_of_ceiling"].as_f64().unwrap() > 0.0);
    // The vault counted what the tool sent (plus the tool's one preparing
    // tokenize request).
    let sent = lines[1]["requests"].as_u64().unwrap();
    let (_, metrics) = v.ops_get("/metrics").await;
    let count = |route: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("vault_http_requests_total{")
                    && l.contains(&format!("route=\"{route}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(
        count("tokenize") + count("detokenize"),
        sent + 1,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_loop_holds_its_rate_and_refuses_a_ceiling_ratio() {
    let v = TestVault::start().await;
    let bin = vault_bin().with_file_name("vault-bench");
    let endpoint = format!("https://127.0.0.1:{}", v.api.port());
    let dir = v.dir.path().to_path_buf();
    let run = move |extra: &'static [&'static str]| {
        let (bin, endpoint, dir) = (bin.clone(), endpoint.clone(), dir.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(bin)
                .args([
                    "--endpoint",
                    &endpoint,
                    "--connections",
                    "2",
                    "--seconds",
                    "2",
                ])
                .arg("--json")
                .args(extra)
                .arg("--dev")
                .arg(dir)
                .output()
                .unwrap()
        })
    };
    let out = run(&["--rate", "100"]).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // 100 requests a second for 2 s: the schedule, not the server, decides.
    let n = r["requests"].as_u64().unwrap();
    assert!((190..=201).contains(&n), "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["rate"], 100.0, "{r}");

    assert!(r.get("slow").is_none(), "{r}");

    // Every request over 0 ms is slow; due 10 ms apart, they make one
    // window that both connections are in.
    let out = run(&["--rate", "100", "--slow-ms", "0"]).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let slow = &r["slow"];
    assert_eq!(slow["requests"], r["requests"], "{r}");
    assert_eq!(slow["windows"], 1, "{r}");
    assert_eq!(slow["largest"][0]["requests"], r["requests"], "{r}");
    assert_eq!(slow["largest"][0]["connections"], 2, "{r}");
    for bad in [&["--slow-ms=-1"], &["--slow-ms=NaN"], &["--slow-ms=inf"]] {
        let out = run(bad).await.unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--slow-ms"),
            "{bad:?}"
        );
    }

    let out = run(&["--rate", "100", "--ceiling"]).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ceiling"));
    // A rate whose gap is no duration (here: 1e-300 per second) is refused,
    // not a panic.
    let out = run(&["--rate", "1e-300"]).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rate"));
}
