//! `vault-eval`: scores the free-text PII detector (`vault::detect`) on a
//! labelled synthetic corpus (`vault_suite::corpus`): per class support, TP,
//! FP, FN, precision, recall and F1, exact (same class and span) and lenient
//! (same class, overlapping span), the micro-average, and the detector's
//! throughput. The corpus is synthetic, so `--show-errors` prints misses and
//! false positives with the text around them.
//!
//! ```sh
//! vault-eval --docs 2000 --seed 1 --show-errors 5
//! ```
//! Build with `--release` for a meaningful throughput figure.

use clap::Parser;
use vault_suite::corpus;

#[derive(Debug, Parser)]
#[command(
    name = "vault-eval",
    about = "Score the PII detector on a labelled synthetic corpus"
)]
struct Args {
    /// Documents to generate.
    #[arg(long, default_value_t = 2000)]
    docs: usize,
    /// Corpus seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Print up to K false positives and K misses per class, with context.
    #[arg(long, value_name = "K", default_value_t = 0)]
    show_errors: usize,
    /// Score the hand-labelled held-out set (tests/data/detect-holdout.txt)
    /// instead of the generated corpus.
    #[arg(long)]
    holdout: bool,
    /// Print one generated document (its text and labels) and exit.
    #[arg(long, value_name = "INDEX")]
    dump: Option<usize>,
}

fn main() {
    let args = Args::parse();
    if let Some(i) = args.dump {
        let d = corpus::generate_doc(args.seed, i);
        println!("[{}]\n{}\n", d.kind.as_str(), d.text);
        for l in &d.labels {
            println!(
                "{:>5}..{:<5} {:<15} ⟦{}⟧",
                l.start,
                l.end,
                l.class.as_str(),
                d.span(l.start, l.end)
            );
        }
        return;
    }
    let docs = if args.holdout {
        corpus::holdout()
    } else {
        corpus::generate(args.seed, args.docs)
    };
    let report = corpus::evaluate_keep(&docs, args.show_errors);
    if args.json {
        let mut v = report.to_json();
        if args.show_errors > 0 {
            if let (Some(obj), Ok(errors)) =
                (v.as_object_mut(), serde_json::to_value(&report.errors))
            {
                obj.insert("errors".to_string(), errors);
            }
        }
        println!("{v:#}");
    } else {
        print!("{report}");
        if args.show_errors > 0 {
            print!("{}", report.errors_text(args.show_errors));
        }
    }
}
