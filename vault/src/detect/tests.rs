//! Unit tests for the detector: for each class a positive, a negative and a
//! decoy; full-width digits and separators; offsets after characters outside
//! the BMP; overlap resolution; that a `Finding` prints no text; and that
//! adversarial inputs take linear time.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use super::*;

/// The findings of `text` as (class, span text).
fn found(text: &str) -> Vec<(Class, &str)> {
    detect(text)
        .iter()
        .map(|f| (f.class, &text[f.byte_start..f.byte_end]))
        .collect()
}

fn only(text: &str) -> (Class, &str) {
    let f = found(text);
    assert_eq!(f.len(), 1, "{text:?}: {f:?}");
    f[0]
}

fn nothing(text: &str) {
    let f = found(text);
    assert!(f.is_empty(), "{text:?}: {f:?}");
}

/// A resident ID from its first 17 digits (MOD 11-2, written out again here
/// so the test does not trust the code it tests).
fn id(first17: &str) -> String {
    let w = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let s: u32 = first17
        .bytes()
        .zip(w)
        .map(|(b, w)| u32::from(b - b'0') * w)
        .sum();
    let check = b"10X98765432"[(s % 11) as usize];
    format!("{first17}{}", char::from(check))
}

/// A card number from all digits but the last, with the Luhn digit.
fn luhn(body: &str) -> String {
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

// ---- resident ID ----

#[test]
fn resident_id_positive() {
    let t = "身份证号：350102199003071234，请核对。";
    assert_eq!(only(t), (Class::CnResidentId, "350102199003071234"));
    let f = detect(t);
    assert!(f[0].validated);
    assert!(f[0].confidence > 0.9);
    assert_eq!(
        only("his ID 11010519491231002X ok"),
        (Class::CnResidentId, "11010519491231002X")
    );
    assert_eq!(
        only("id:11010519491231002x"),
        (Class::CnResidentId, "11010519491231002x")
    );
    assert_eq!(
        only("号码 3501 0219 9003 0712 34 。"),
        (Class::CnResidentId, "3501 0219 9003 0712 34")
    );
    assert_eq!(
        only("证件３５０１０２１９９００３０７１２３４"),
        (Class::CnResidentId, "３５０１０２１９９００３０７１２３４")
    );
    assert_eq!(
        only("身份证：350102900307123"),
        (Class::CnResidentId, "350102900307123")
    );
    let f = detect("身份证：350102900307123");
    assert!(!f[0].validated);
}

#[test]
fn resident_id_permits_and_foreigners() {
    for first17 in [
        "81000019900307123",
        "82000020010101456",
        "83000019851231789",
    ] {
        let v = id(first17);
        let t = format!("居住证号码{v}。");
        assert_eq!(only(&t), (Class::CnResidentId, v.as_str()));
    }
    let v = id("93315619870502001");
    assert_eq!(only(&format!("永久居留身份证 {v}")).0, Class::CnResidentId);
}

#[test]
fn resident_id_negatives_and_decoys() {
    // Wrong check character.
    nothing("身份证号：350102199003071235");
    // Not a date.
    let v = id("35010219901307123");
    nothing(&format!("身份证号：{v}"));
    // A date in the future.
    let v = id("35010221990307123");
    nothing(&format!("身份证号：{v}"));
    // Embedded in a longer digit run, or glued to letters.
    nothing("编码1350102199003071234");
    nothing("x350102199003071234");
    nothing("3501021990030712345");
    nothing("350102199003071234abc");
    // 15 digits without a cue are too common to report.
    nothing("单号 350102900307123");
}

// ---- phone ----

#[test]
fn phone_mobile_forms() {
    let cases = [
        ("手机：13800138000。", "13800138000"),
        ("call +86 138-0013-8000 now", "+86 138-0013-8000"),
        ("电话0086 13800138000", "0086 13800138000"),
        ("电话8613800138000", "8613800138000"),
        ("手机１３８００１３８０００", "１３８００１３８０００"),
        ("手机 138 0013 8000，", "138 0013 8000"),
        ("请拨打138-0013-8000", "138-0013-8000"),
        (
            "联系电话：＋８６　１３８－００１３－８０００",
            "＋８６　１３８－００１３－８０００",
        ),
        ("17400012345", "17400012345"),
        ("他的号码是19912345678。", "19912345678"),
    ];
    for (t, want) in cases {
        assert_eq!(only(t), (Class::Phone, want), "{t}");
    }
}

#[test]
fn phone_fixed_line_and_extensions() {
    let cases = [
        ("电话：0591-88088788", "0591-88088788"),
        ("电话（0591）88088788。", "（0591）88088788"),
        ("Tel: (0591) 8808 8788", "(0591) 8808 8788"),
        ("北京 010-62345678 转 123。", "010-62345678 转 123"),
        ("座机0592-5123456分机8001", "0592-5123456分机8001"),
        ("座机0592-5123456 分机号 8001", "0592-5123456 分机号 8001"),
        ("座机0592-5123456转分机8001", "0592-5123456转分机8001"),
        ("Tel 0591-28088788 ext. 12", "0591-28088788 ext. 12"),
        ("总机：0591-88088788-8001", "0591-88088788"),
        ("+86 591 8808 8788", "+86 591 8808 8788"),
    ];
    for (t, want) in cases {
        assert_eq!(only(t), (Class::Phone, want), "{t}");
    }
}

#[test]
fn phone_negatives_and_decoys() {
    // Prefixes never assigned.
    nothing("15412345678");
    nothing("17912345678");
    nothing("19412345678");
    // Too long, too short, glued.
    nothing("138001380001");
    nothing("1380013800");
    nothing("13800138000123");
    nothing("TEL13800138000");
    nothing("13800138000abc");
    // Amounts, orders, tracking numbers, dates, times.
    nothing("金额：¥13800138000.00");
    nothing("￥13800138000");
    nothing("金额：1,380,013.80元");
    nothing("13800138000.5");
    nothing("订单号20231105123456789");
    nothing("订单号：13800138000");
    nothing("快递单号 SF1234567890123");
    nothing("日期 2023-11-05 10:30:00");
    // A service line is a company's, not a person's.
    nothing("客服热线 400-123-4567");
    // Fixed line without the trunk zero is just a number.
    nothing("59188088788");
}

// ---- email ----

#[test]
fn email_positive_and_negative() {
    assert_eq!(
        only("邮箱：zhang.san+tag@example.com。"),
        (Class::Email, "zhang.san+tag@example.com")
    );
    assert_eq!(
        only("写信到chen＠mail.fj.cn吧"),
        (Class::Email, "chen＠mail.fj.cn")
    );
    assert_eq!(
        only("QQ邮箱13800138000@qq.com"),
        (Class::Email, "13800138000@qq.com")
    );
    assert_eq!(only("mail: A.B@X.CN."), (Class::Email, "A.B@X.CN"));
    nothing("a@b");
    nothing("user@localhost");
    nothing("@@@ @. .@ a@.b");
    nothing("foo@bar.123");
    // An internationalized TLD in its ASCII form.
    assert_eq!(
        only("邮箱 a@xn--fsqu00a.xn--fiqs8s，"),
        (Class::Email, "a@xn--fsqu00a.xn--fiqs8s")
    );
}

// ---- USCC, organization code ----

#[test]
fn uscc_and_org_code() {
    let t = "统一社会信用代码：91350100M000100Y43。";
    assert_eq!(only(t), (Class::Uscc, "91350100M000100Y43"));
    assert!(detect(t)[0].validated);
    assert_eq!(
        only("公司 91350100M000100Y43"),
        (Class::Uscc, "91350100M000100Y43")
    );
    // A pilot code fails the check: reported only under its label, flagged.
    let t = "统一社会信用代码 91350100M0001TGQXM";
    assert_eq!(only(t), (Class::Uscc, "91350100M0001TGQXM"));
    assert!(!detect(t)[0].validated);
    nothing("代码 91350100M0001TGQXM");
    nothing("91350100M000100Y44");

    let t = "组织机构代码：D2143569-X";
    assert_eq!(only(t), (Class::OrgCode, "D2143569-X"));
    assert!(detect(t)[0].validated);
    assert_eq!(only("代码12345678-8，"), (Class::OrgCode, "12345678-8"));
    nothing("代码12345678-9");
    nothing("12345678-8-1");
    assert_eq!(
        only("组织机构代码 123456788"),
        (Class::OrgCode, "123456788")
    );
}

// ---- passport, bank card, IP ----

#[test]
fn passports() {
    assert_eq!(only("护照号：E12345678。"), (Class::Passport, "E12345678"));
    assert_eq!(only("passport EA1234567"), (Class::Passport, "EA1234567"));
    assert_eq!(
        only("港澳通行证 H1234567890"),
        (Class::Passport, "H1234567890")
    );
    assert_eq!(only("台胞证 12345678"), (Class::Passport, "12345678"));
    nothing("编号 12345678");
    nothing("model E1234567");
    nothing("E123456789");
    nothing("xE12345678");
}

#[test]
fn bank_cards() {
    let card = luhn("622202123456789012");
    assert_eq!(card.len(), 19);
    let t = format!("银行卡号：{card}。");
    assert_eq!(only(&t), (Class::BankCard, card.as_str()));
    assert!(detect(&t)[0].validated);
    let c16 = luhn("621700123456789");
    let spaced: String = c16
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(
        only(&format!("转账到 {spaced}")),
        (Class::BankCard, spaced.as_str())
    );
    // Without a cue, only a Luhn-valid card of a usual length and issuer.
    assert_eq!(
        only(&format!("付款 {c16}")),
        (Class::BankCard, c16.as_str())
    );
    let mut bad = c16.clone().into_bytes();
    bad[15] = if bad[15] == b'9' { b'0' } else { bad[15] + 1 };
    let bad = String::from_utf8(bad).unwrap();
    nothing(&format!("付款 {bad}"));
    // Under a card cue, a Luhn failure is reported, unvalidated.
    let f = detect(&format!("卡号 {bad}"));
    assert_eq!(f.len(), 1);
    assert!(!f[0].validated);
    nothing(&format!("订单号 {c16}"));
    // An ideographic comma ends a number even before more digits.
    let t = format!("收款账号：{card}，2021年12月27日受理");
    assert_eq!(only(&t), (Class::BankCard, card.as_str()));
    nothing(&format!("{c16}7"));
}

#[test]
fn ip_addresses() {
    assert_eq!(only("IP地址：192.168.1.10。"), (Class::Ip, "192.168.1.10"));
    assert_eq!(only("from 10.0.0.1, ok"), (Class::Ip, "10.0.0.1"));
    assert_eq!(only("IPv6 2001:db8::1 。"), (Class::Ip, "2001:db8::1"));
    assert_eq!(
        only("addr fe80::1ff:fe23:4567:890a"),
        (Class::Ip, "fe80::1ff:fe23:4567:890a")
    );
    nothing("192.168.001.010");
    nothing("1.2.3.4.5");
    nothing("256.1.1.1");
    nothing("版本 1.2.3.4");
    nothing("time 12:30:45");
    nothing("MAC 00:1A:2B:3C:4D:5E");
}

// ---- names ----

#[test]
fn names_with_labels() {
    let cases = [
        ("姓名：张伟\n", "张伟"),
        ("姓名: 李小明，", "李小明"),
        ("我叫欧阳娜娜，", "欧阳娜娜"),
        ("联系人：王小明 电话13800138000", "王小明"),
        ("申请人陈建国。", "陈建国"),
        ("法定代表人：林志强", "林志强"),
        ("经办人为黄丽", "黄丽"),
        ("姓名：阿依古丽·买买提。", "阿依古丽·买买提"),
        // A part does not run on into the sentence after it.
        ("联系人：阿依古丽·买买提今天上午来电", "阿依古丽·买买提"),
        ("申请人：努尔别克·吐尔逊来访", "努尔别克·吐尔逊"),
    ];
    for (t, want) in cases {
        let f = found(t);
        assert!(f.contains(&(Class::Name, want)), "{t}: {f:?}");
    }
}

#[test]
fn names_with_honorifics() {
    assert_eq!(only("请联系张伟先生。"), (Class::Name, "张伟"));
    assert_eq!(only("尊敬的王小明女士："), (Class::Name, "王小明"));
    assert_eq!(only("感谢陈老师"), (Class::Name, "陈"));
    assert_eq!(only("司马光同志"), (Class::Name, "司马光"));
}

#[test]
fn names_need_context() {
    nothing("高峰期间道路拥堵");
    nothing("汪洋大海");
    nothing("张伟明天来");
    nothing("王王王王王王王王王王王王");
    // Ordinary words after a weak cue.
    nothing("用户：明白\n");
    nothing("用户：陈列在大厅的指南是最新的吗");
    // A name that is also a word is a name under a cue.
    assert_eq!(only("联系人：高峰，"), (Class::Name, "高峰"));
    // The cue itself is never in the span.
    let f = found("联系人张伟电话");
    assert_eq!(f, vec![(Class::Name, "张伟")]);
}

// ---- address ----

#[test]
fn addresses_after_labels() {
    let t = "地址：福建省福州市鼓楼区五四路100号，电话：0591-88088788";
    let f = found(t);
    assert_eq!(
        f,
        vec![
            (Class::Address, "福建省福州市鼓楼区五四路100号"),
            (Class::Phone, "0591-88088788")
        ]
    );
    let t = "联系地址:厦门市思明区湖滨南路88号\n姓名：张三";
    let f = found(t);
    assert_eq!(f[0], (Class::Address, "厦门市思明区湖滨南路88号"));
    // An IP address label is no postal address.
    assert_eq!(only("IP地址：10.1.2.3"), (Class::Ip, "10.1.2.3"));
    nothing("地址：无");
    assert_eq!(
        only("我家在福州市鼓楼区五四路1号。"),
        (Class::Address, "福州市鼓楼区五四路1号")
    );
}

// ---- offsets, overlap, Debug ----

#[test]
fn offsets_count_characters_outside_the_bmp() {
    let t = "𠀀😀手机13800138000";
    let f = detect(t);
    assert_eq!(f.len(), 1);
    assert_eq!((f[0].start, f[0].end), (4, 15));
    assert_eq!(f[0].byte_start, 4 + 4 + 3 + 3);
    assert_eq!(&t[f[0].byte_start..f[0].byte_end], "13800138000");
    let t = "𠀀姓名：𠀀𠀀张伟，手机１３８００１３８０００";
    for f in detect(t) {
        let by_chars: String = t.chars().skip(f.start).take(f.end - f.start).collect();
        assert_eq!(by_chars, &t[f.byte_start..f.byte_end]);
    }
}

#[test]
fn overlaps_resolve_to_the_best() {
    // An email holding a phone number is one email.
    assert_eq!(
        only("13800138000@163.com"),
        (Class::Email, "13800138000@163.com")
    );
    // A valid resident ID that is also USCC-shaped is a resident ID.
    assert_eq!(only("350102199003071234").0, Class::CnResidentId);
    // Several findings, sorted and disjoint.
    let t = "姓名：张伟，身份证350102199003071234，手机13800138000，邮箱zw@x.cn";
    let f = detect(t);
    let classes: Vec<Class> = f.iter().map(|f| f.class).collect();
    assert_eq!(
        classes,
        [Class::Name, Class::CnResidentId, Class::Phone, Class::Email]
    );
    for w in f.windows(2) {
        assert!(w[0].byte_end <= w[1].byte_start);
    }
}

#[test]
fn resolve_prefers_validated_then_confidence_then_length() {
    let c = |class, start, end, confidence, validated| Candidate {
        class,
        start,
        end,
        confidence,
        validated,
    };
    let kept = resolve(vec![
        c(Class::Phone, 0, 11, 0.95, false),
        c(Class::BankCard, 0, 16, 0.9, true),
        c(Class::Name, 20, 22, 0.9, false),
        c(Class::Address, 18, 30, 0.85, false),
    ]);
    assert_eq!(kept.len(), 2);
    assert_eq!(kept[0].class, Class::BankCard);
    assert_eq!(kept[1].class, Class::Name);
}

#[test]
fn finding_debug_holds_no_text() {
    let t = "张伟先生，手机13800138000，zw@example.com";
    for f in detect(t) {
        let dbg = format!("{f:?}");
        for needle in ["张伟", "138", "example", "zw"] {
            assert!(!dbg.contains(needle), "{dbg}");
        }
    }
}

// ---- adversarial input ----

#[test]
fn adversarial_inputs_are_linear() {
    let size = 200_000;
    let inputs = [
        "1".repeat(size),
        "王".repeat(size / 3),
        "a@a.a@".repeat(size / 6),
        "@".repeat(size),
        ".".repeat(size),
        "1 ".repeat(size / 2),
        "1-".repeat(size / 2),
        "先生".repeat(size / 6),
        "姓名：王".repeat(size / 12),
        "地址：".repeat(size / 9),
        "a".repeat(size),
        "1.".repeat(size / 2),
        ":".repeat(size),
        "x@".repeat(size / 2) + "example.com",
    ];
    for input in inputs {
        let t = std::time::Instant::now();
        let f = detect(&input);
        // Debug builds: generous, yet far below quadratic time.
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{} took {:?}",
            &input[..20],
            t.elapsed()
        );
        for w in f.windows(2) {
            assert!(w[0].byte_end <= w[1].byte_start);
        }
    }
}

#[test]
fn every_span_normalizes() {
    let t = "姓名：陈明 先生 手机+86 139 5000 1234 身份证11010519491231002X \
             地址：福州市仓山区上渡路1号 邮箱 c.m@fj.cn 卡号6217001234567890128 \
             IP 8.8.8.8 信用代码91350100M000100Y43 组织机构代码D2143569-X 护照E12345678";
    let f = detect(t);
    assert!(f.len() >= 9, "{:?}", found(t));
    for x in f {
        let span = &t[x.byte_start..x.byte_end];
        assert!(
            classes::normalize(x.class, span).is_ok(),
            "{} {span}",
            x.class
        );
    }
}

#[test]
fn a_hospital_number_after_a_live_in_cue_is_no_address() {
    let text = "患者吴桂英，女，68岁，住院号Z20240312，联系人吴建新";
    assert!(detect(text).iter().all(|f| f.class != Class::Address));
    let text = "患者吴桂英，住福州市鼓楼区五四路158号";
    assert!(detect(text).iter().any(|f| f.class == Class::Address));
}

#[test]
fn labels_ending_in_a_serial_word_do_not_hide_a_valid_id() {
    use Class::*;
    for text in [
        "身份证编号：350102199003071234",
        "居民身份证编号：11010519491231002X",
        "证件编号 350102199003071234",
    ] {
        assert_eq!(only(text).0, CnResidentId, "{text}");
    }
    assert_eq!(only("护照编号：E12345678").0, Passport);
    // A checksum-valid ID survives even a real anti-label; anything else
    // under one still does not count.
    assert_eq!(only("订单编号：350102199003071234").0, CnResidentId);
    nothing("订单编号：13800138000");
}

#[test]
fn separators_between_whole_values_list_them() {
    use Class::*;
    let id2 = "11010519491231002X";
    for (text, want) in [
        (
            "张三,350102199003071234,13800138000".to_string(),
            vec![(CnResidentId, "350102199003071234"), (Phone, "13800138000")],
        ),
        (
            "电话13800138000/13900139000".into(),
            vec![(Phone, "13800138000"), (Phone, "13900139000")],
        ),
        (
            "13800138000／13900139000".into(),
            vec![(Phone, "13800138000"), (Phone, "13900139000")],
        ),
        (
            "13800138000,13900139000".into(),
            vec![(Phone, "13800138000"), (Phone, "13900139000")],
        ),
        (
            "13800138000-13900139000".into(),
            vec![(Phone, "13800138000"), (Phone, "13900139000")],
        ),
        (
            format!("身份证号:350102199003071234/{id2}"),
            vec![(CnResidentId, "350102199003071234"), (CnResidentId, id2)],
        ),
    ] {
        let got = found(&text);
        for w in &want {
            assert!(got.contains(w), "{text}: {got:?} lacks {w:?}");
        }
    }
    // Numbered labels.
    for text in [
        "联系电话1：13800138000，联系电话2：13900139000",
        "手机2:13900139000",
    ] {
        assert!(found(text).iter().any(|(c, _)| *c == Phone), "{text}");
    }
    assert_eq!(only("身份证1：350102199003071234").0, CnResidentId);
    // What the old rules guarded stays as it was: times, amounts, dates.
    nothing("会议 10:30 开始，金额 1,234,567 元，日期 2023/10/01");
    nothing("编号 12345678,12345678");
}

#[test]
fn addresses_with_ports_prefixes_and_keys() {
    use Class::*;
    assert_eq!(only("IP 192.168.1.1:8080"), (Ip, "192.168.1.1"));
    assert_eq!(only("10.0.0.1:8080 拒绝"), (Ip, "10.0.0.1"));
    assert_eq!(only("网段 10.0.0.0/8"), (Ip, "10.0.0.0"));
    assert_eq!(only("ip=10.1.2.3"), (Ip, "10.1.2.3"));
    assert_eq!(only("phone=13800138000"), (Phone, "13800138000"));
    assert_eq!(only("手机号=13800138000"), (Phone, "13800138000"));
    // A port too long, or a version tail, is no address end.
    nothing("版本 1.2.3.4:123456");
    nothing("请注意 :: 这里");
    assert!(!found("E123456782001:db8::1").iter().any(|(c, _)| *c == Ip));
    for text in ["13800138000:192.168.1.1", "13800138000:10.0.0.1 login"] {
        assert!(found(text).iter().any(|(c, _)| *c == Ip), "{text}");
    }
    nothing("a :: b");
}

#[test]
fn a_lower_case_passport_counts_under_its_label() {
    assert_eq!(only("护照号：e12345678"), (Class::Passport, "e12345678"));
    assert_eq!(only("护照号码：g12345678").0, Class::Passport);
}

#[test]
fn ordinary_words_next_to_name_cues_are_not_names() {
    for text in [
        "历史老师",
        "我们班主任说",
        "维修师傅来了",
        "值班医生",
        "申请人向法院提出申请",
        "申请人陈述如下",
        "当事人尚未缴纳罚款",
        "联系人方式",
        "我是高三学生",
    ] {
        assert!(
            !found(text).iter().any(|(c, _)| *c == Class::Name),
            "{text}: {:?}",
            found(text)
        );
    }
    // The cues still work on names.
    assert_eq!(only("请张老师来"), (Class::Name, "张"));
    assert_eq!(only("申请人陈明"), (Class::Name, "陈明"));
    assert_eq!(only("姓名：高峰"), (Class::Name, "高峰"));
}

#[test]
fn an_email_with_a_full_width_dot_or_letters_in_its_domain() {
    assert_eq!(
        only("邮箱：zhangsan@example．com"),
        (Class::Email, "zhangsan@example．com")
    );
    assert_eq!(
        only("邮箱：zhangsan@ｅｘａｍｐｌｅ.ｃｏｍ，谢谢"),
        (Class::Email, "zhangsan@ｅｘａｍｐｌｅ.ｃｏｍ")
    );
    // A sentence's full stop is no part of it.
    assert_eq!(
        only("请发到abc@example.com。谢谢"),
        (Class::Email, "abc@example.com")
    );
}

#[test]
fn a_trunk_zero_in_parentheses_after_the_country_code() {
    for text in [
        "电话 +86(0)591-88088788",
        "电话 +86 (0)591 8808 8788",
        "电话 +86 (0) 591 8808 8788",
        "电话 +86 (591) 8808 8788",
        "电话 +86 (0591) 88088788",
    ] {
        let (class, span) = only(text);
        assert_eq!(class, Class::Phone, "{text}");
        assert!(
            span.starts_with("+86") && span.ends_with("8788"),
            "{text}: {span}"
        );
    }
}

#[test]
fn a_name_spaced_out_in_a_name_field() {
    assert_eq!(only("姓名：张 三"), (Class::Name, "张 三"));
    assert_eq!(only("姓名：欧阳　娜娜，电话"), (Class::Name, "欧阳　娜娜"));
    // Elsewhere a space still ends a name.
    assert_eq!(only("申请人陈明 今天来"), (Class::Name, "陈明"));
}

#[test]
fn numbers_split_by_zero_width_characters() {
    let card = id("11010519491231002");
    for sep in ['\u{200B}', '\u{200C}', '\u{200D}', '\u{2060}', '\u{FEFF}'] {
        let phone = format!("电话138{sep}0013{sep}8000，谢谢");
        let (class, span) = only(&phone);
        assert_eq!(class, Class::Phone, "{sep:?}");
        assert_eq!(span, format!("138{sep}0013{sep}8000"), "{sep:?}");
        let resident = format!("身份证号{}{sep}{}", &card[..6], &card[6..]);
        assert_eq!(only(&resident).0, Class::CnResidentId, "{sep:?}");
    }
    // The span normalizes to the plain number.
    let span = only("电话138\u{200B}0013\u{200B}8000").1;
    assert_eq!(
        crate::classes::normalize(Class::Phone, span)
            .unwrap()
            .value(),
        "+8613800138000"
    );
}

/// Whatever the normalizer strips from inside a number, the detector reads
/// through: a value `normalize` takes as one phone, resident ID or name,
/// written with any such character inside it, is found (or deidentify
/// would pass it in clear). Punctuation that the scanner reads as the end
/// of a number on purpose (`.`, `/`, brackets, middle dots: dates, sums,
/// lists) is left out; so are line breaks.
#[test]
fn the_detector_reads_through_what_normalization_strips() {
    let card = id("11010519491231002");
    let mut missed = Vec::new();
    use unicode_normalization::UnicodeNormalization;
    for c in (0u32..0x3_0000).filter_map(char::from_u32) {
        let ends_a_number = |d: char| {
            ".,/()（）·・".contains(d)
                || matches!(d, '\n' | '\r' | '\u{0B}' | '\u{0C}')
                || matches!(d, '\u{85}' | '\u{2028}' | '\u{2029}')
        };
        if std::iter::once(c).nfkc().all(ends_a_number) {
            continue;
        }
        let phone = format!("138{c}0013{c}8000");
        if crate::classes::normalize(Class::Phone, &phone).is_ok()
            && !found(&format!("电话{phone}，谢谢")).contains(&(Class::Phone, phone.as_str()))
        {
            missed.push(format!("phone {:04X}", u32::from(c)));
        }
        let resident = format!("{}{c}{}", &card[..6], &card[6..]);
        if crate::classes::normalize(Class::CnResidentId, &resident).is_ok()
            && found(&format!("身份证号{resident}")) != [(Class::CnResidentId, resident.as_str())]
        {
            missed.push(format!("resident id {:04X}", u32::from(c)));
        }
        let name = format!("陈{c}明");
        if crate::classes::normalize(Class::Name, &name).is_ok_and(|n| n.value() == "陈明")
            && found(&format!("姓名：{name}，电话")) != [(Class::Name, name.as_str())]
        {
            missed.push(format!("name {:04X}", u32::from(c)));
        }
    }
    assert!(missed.is_empty(), "{missed:?}");
    // Runs of them: two of a space or an invisible character, and spaced
    // dashes, between a number's groups; and between a label and a name.
    for c in (0u32..0x3_0000).filter_map(char::from_u32) {
        if !(c.is_whitespace() || crate::classes::is_invisible(c))
            || matches!(
                c,
                '\n' | '\r' | '\u{0B}' | '\u{0C}' | '\u{85}' | '\u{2028}' | '\u{2029}'
            )
        {
            continue;
        }
        let phone = format!("138{c}{c}0013{c}-{c}8000");
        if !found(&format!("电话{phone}，谢谢")).contains(&(Class::Phone, phone.as_str())) {
            missed.push(format!("phone run {:04X}", u32::from(c)));
        }
        let resident = format!("{}{c}{c}{}", &card[..6], &card[6..]);
        if found(&format!("身份证号{resident}")) != [(Class::CnResidentId, resident.as_str())] {
            missed.push(format!("resident id run {:04X}", u32::from(c)));
        }
        if found(&format!("姓名：{c}陈明，电话")) != [(Class::Name, "陈明")] {
            missed.push(format!("name after {:04X}", u32::from(c)));
        }
    }
    assert!(missed.is_empty(), "{missed:?}");
    for text in [
        "电话 138 - 0013 - 8000",
        "电话 138 -0013- 8000",
        "电话 138 — 0013 — 8000",
    ] {
        assert_eq!(only(text).0, Class::Phone, "{text}");
    }
    // A spaced dash between whole values lists them, grouped or not.
    for (text, a, b) in [
        ("13800138000 - 13900139000", "13800138000", "13900139000"),
        (
            "138 0013 8000 - 139 0013 9000",
            "138 0013 8000",
            "139 0013 9000",
        ),
        (
            "0591-28088788 - 0591-28088799",
            "0591-28088788",
            "0591-28088799",
        ),
    ] {
        assert_eq!(
            found(text),
            [(Class::Phone, a), (Class::Phone, b)],
            "{text}"
        );
    }
    // So does a device word inside an everyday phrase not hide a card.
    assert_eq!(
        only("请转到这串号码：6222021234567890128").0,
        Class::BankCard
    );
    // The minus sign joins a number's groups, and normalizes away.
    assert_eq!(
        crate::classes::normalize(Class::Phone, "138\u{2212}0013\u{2212}8000")
            .unwrap()
            .value(),
        "+8613800138000"
    );
}

/// A device number under its label is no resident ID, though a 15-digit
/// IMEI can look like a first-generation one (province code, a date).
#[test]
fn device_numbers_are_not_resident_ids() {
    assert!(
        !found("设备 352099000715231").is_empty(),
        "the decoy looks like an ID"
    );
    nothing("设备IMEI 352099000715231");
    nothing("手机串号：352099000715231");
    nothing("MEID 352099000715231");
    // Only that reading goes: a phone after such a word is still one
    // (`串号` is also in `这串号码`), and so is an 18-digit ID.
    assert_eq!(
        only("请拨打这串号码：13800138000"),
        (Class::Phone, "13800138000")
    );
    assert_eq!(only("IMEI 13800138000"), (Class::Phone, "13800138000"));
    let card = id("11010519491231002");
    assert_eq!(only(&format!("设备号 {card}")).0, Class::CnResidentId);
}
