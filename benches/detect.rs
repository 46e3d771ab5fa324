//! Criterion benches of `vault::detect::detect`, reporting bytes per second:
//! about 100 KB of typical mixed Chinese/English portal text with a few PII
//! per paragraph, and adversarial inputs (a run of digits, a run of surname
//! characters, `a@a.a@` repeated, surname cues repeated) at two sizes each,
//! whose equal throughput shows linear scaling.
//! Run: `cargo bench --bench detect` (CI only compiles them).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// Paragraphs of portal prose; `{}` marks where a PII value goes.
const PROSE: [&str; 8] = [
    "为进一步优化营商环境，提升政务服务效能，根据《福建省优化营商环境条例》有关规定，\
     市行政服务中心自2024年1月1日起推行“一网通办”改革，企业和群众可通过闽政通APP在线办理\
     营业执照、社保缴纳、公积金提取等高频事项。如有疑问，请联系经办人{}，联系电话{}。",
    "The municipal service center now accepts online applications for residence permits. \
     Applicants should upload a scanned copy of their ID card and proof of address. \
     For help, write to {} or call the hotline during office hours (9:00-17:00, Mon-Fri).",
    "本次申报共受理材料1,286件，办结率98.6%，平均办理时限缩短至3.5个工作日。\
     申请人{}（身份证号{}）反映窗口排队时间过长，已转相关部门核实处理，订单号20231105123456789。",
    "近日，我局对辖区内的食品经营单位开展专项检查，共检查企业326家，责令整改41家，\
     立案查处7家。被检查单位统一社会信用代码为{}，法定代表人{}，现场检查情况良好。",
    "温馨提示：系统将于本周六凌晨2:00至6:00进行升级维护（版本v3.2.1），期间暂停网上申报服务。\
     退款将原路退回至银行卡{}，金额：¥1,380.00元，请注意查收，快递单号SF1234567890123。",
    "留言：小区门口道路破损严重，高峰期间车辆拥堵，希望有关部门尽快维修。\
     我叫{}，住址：{}，手机号码{}，谢谢！",
    "Mixed line: 联系人 Contact {} / Tel {} / Email {} — server IP {} logged the request \
     at 2024-03-15 10:30:00 (request id 7f3a9c2e, build 2.10.3).",
    "根据《中华人民共和国个人信息保护法》第十三条规定，处理个人信息应当具有明确、合理的目的，\
     并应当与处理目的直接相关，采取对个人权益影响最小的方式。本通知自发布之日起施行。",
];

const NAMES: [&str; 6] = ["张伟", "陈建国", "林小红", "欧阳娜娜", "黄丽", "王志强"];
const PHONES: [&str; 5] = [
    "13800138000",
    "+86 139-5000-1234",
    "0591-88088788",
    "(0592)5123456转801",
    "１５０６０１２３４５６",
];
const IDS: [&str; 3] = [
    "350102199003071234",
    "11010519491231002X",
    "3501 0219 9003 0712 34",
];
const EMAILS: [&str; 3] = [
    "zhang.wei@example.com",
    "chen＠fj.gov.cn",
    "13800138000@qq.com",
];
const USCCS: [&str; 2] = ["91350100M000100Y43", "91350100M0001TGQXM"];
const CARDS: [&str; 2] = ["6217001234567890128", "6222 0212 3456 7890"];
const ADDRESSES: [&str; 2] = [
    "福建省福州市鼓楼区五四路100号",
    "厦门市思明区湖滨南路88号3楼",
];
const IPS: [&str; 2] = ["192.168.10.23", "2001:db8::8a2e:370:7334"];

/// About `size` bytes of portal text, deterministic.
fn typical_text(size: usize) -> String {
    let mut out = String::with_capacity(size + 1024);
    let mut k = 0usize;
    while out.len() < size {
        let para = PROSE[k % PROSE.len()];
        let mut parts = para.split("{}");
        if let Some(first) = parts.next() {
            out.push_str(first);
        }
        for (slot, rest) in parts.enumerate() {
            let i = k + slot;
            let value = match (k % PROSE.len(), slot) {
                (0, 0) | (2, 0) | (3, 1) | (5, 0) => NAMES[i % NAMES.len()],
                (0, 1) | (5, 2) | (6, 1) => PHONES[i % PHONES.len()],
                (1, _) | (6, 2) => EMAILS[i % EMAILS.len()],
                (2, 1) => IDS[i % IDS.len()],
                (3, 0) => USCCS[i % USCCS.len()],
                (4, _) => CARDS[i % CARDS.len()],
                (5, 1) => ADDRESSES[i % ADDRESSES.len()],
                (6, 0) => NAMES[i % NAMES.len()],
                _ => IPS[i % IPS.len()],
            };
            out.push_str(value);
            out.push_str(rest);
        }
        out.push('\n');
        k += 1;
    }
    out
}

fn typical(c: &mut Criterion) {
    let text = typical_text(100_000);
    let mut g = c.benchmark_group("detect_typical");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_with_input(BenchmarkId::new("portal", text.len()), &text, |b, t| {
        b.iter(|| vault::detect::detect(black_box(t)))
    });
    g.finish();
}

fn adversarial(c: &mut Criterion) {
    let mut g = c.benchmark_group("detect_adversarial");
    g.sample_size(10);
    let cases: [(&str, &str); 5] = [
        ("digits", "1"),
        ("surnames", "王陈林黄张"),
        ("at_dots", "a@a.a@"),
        ("cues", "王先生姓名："),
        ("spaced_digits", "1 "),
    ];
    for (name, unit) in cases {
        for size in [256 * 1024, 1024 * 1024] {
            let text = unit.repeat(size / unit.len());
            g.throughput(Throughput::Bytes(text.len() as u64));
            g.bench_with_input(BenchmarkId::new(name, size), &text, |b, t| {
                b.iter(|| vault::detect::detect(black_box(t)))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, typical, adversarial);
criterion_main!(benches);
