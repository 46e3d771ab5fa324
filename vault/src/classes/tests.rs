//! Unit tests for the class normalizers, validators and masks: every worked
//! example of PII-FORMATS.md, full-width and separator variants that must
//! share one value, the rejections, and the masks of SPEC.md.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use super::*;

fn ok(class: Class, raw: &str) -> String {
    match normalize(class, raw) {
        Ok(n) => n.into_value(),
        Err(e) => panic!("{class} {raw:?} rejected: {e:?}"),
    }
}

fn err(class: Class, raw: &str) -> Invalid {
    match normalize(class, raw) {
        Ok(n) => panic!("{class} {raw:?} accepted as {:?}", n.value()),
        Err(e) => e,
    }
}

fn flag(class: Class, raw: &str) -> Option<Flag> {
    normalize(class, raw).unwrap().flag()
}

/// A resident ID from its first 17 digits, with the right check character.
fn with_check(first17: &str) -> String {
    let check = resident_id::check_char(first17.as_bytes()).unwrap();
    format!("{first17}{}", char::from(check))
}

// ---- Class ----

#[test]
fn class_names_and_tags_are_stable() {
    let names = [
        "name",
        "cn_resident_id",
        "phone",
        "email",
        "uscc",
        "org_code",
        "passport",
        "bank_card",
        "ip",
        "address",
        "text",
    ];
    for (i, class) in Class::ALL.into_iter().enumerate() {
        assert_eq!(class.as_str(), names[i]);
        assert_eq!(usize::from(class.tag()), i + 1);
        assert_eq!(Class::parse(names[i]), Some(class));
        assert_eq!(Class::from_tag(class.tag()), Some(class));
        assert_eq!(names[i].parse::<Class>(), Ok(class));
        assert_eq!(class.to_string(), names[i]);
        let json = serde_json::to_string(&class).unwrap();
        assert_eq!(json, format!("\"{}\"", names[i]));
        assert_eq!(serde_json::from_str::<Class>(&json).unwrap(), class);
    }
    assert_eq!(Class::from_tag(0), None);
    assert_eq!(Class::from_tag(12), None);
    assert_eq!(Class::parse("Phone"), None);
    assert_eq!("mobile".parse::<Class>(), Err(UnknownClass));
    assert_eq!(UnknownClass.to_string(), "unknown class");
    assert!(serde_json::from_str::<Class>("\"mobile\"").is_err());
    assert_eq!(Flag::ChecksumFailed.as_str(), "checksum_failed");
    assert_eq!(Invalid::Checksum.to_string(), "wrong check character");
}

// ---- cn_resident_id ----

#[test]
fn resident_id_worked_examples() {
    let id = Class::CnResidentId;
    assert_eq!(ok(id, "11010519491231002X"), "11010519491231002X");
    assert_eq!(ok(id, "11010519491231002x"), "11010519491231002X");
    assert_eq!(ok(id, "11010519491231002Ｘ"), "11010519491231002X");
    assert_eq!(ok(id, "350102199003071234"), "350102199003071234");
    assert_eq!(with_check("11010519491231002"), "11010519491231002X");
    assert_eq!(with_check("35010219900307123"), "350102199003071234");
}

#[test]
fn resident_id_variants_share_one_value_and_token_form() {
    let variants = [
        "350102199003071234",
        "3501 0219 9003 0712 34",
        "３５０１０２１９９００３０７１２３４",
        "350102-19900307-1234",
        " 350102\u{3000}19900307\u{2014}1234 ",
        "350102900307123",
        "350 102 900 307 123",
    ];
    for v in variants {
        let n = normalize(Class::CnResidentId, v).unwrap();
        assert_eq!(n.value(), "350102199003071234", "{v}");
        assert_eq!(n.token_form(), "350102199003071234", "{v}");
        assert_eq!(n.flag(), None);
    }
}

#[test]
fn resident_id_rejections() {
    let id = Class::CnResidentId;
    assert_eq!(err(id, "350102199003071235"), Invalid::Checksum);
    assert_eq!(err(id, "11010519491231002Y"), Invalid::Charset);
    assert_eq!(err(id, "1101051949123100X2"), Invalid::Charset);
    assert_eq!(err(id, "35010219900307123"), Invalid::Length);
    assert_eq!(err(id, "3501021990030712345"), Invalid::Length);
    assert_eq!(err(id, "35010290030712X"), Invalid::Charset);
    assert_eq!(err(id, ""), Invalid::Empty);
    assert_eq!(err(id, "  - "), Invalid::Empty);
    assert_eq!(err(id, &"1".repeat(300)), Invalid::TooLong);
    assert_eq!(err(id, &"1".repeat(5000)), Invalid::TooLong);
}

#[test]
fn resident_id_birth_dates() {
    let id = Class::CnResidentId;
    // 30 February, 29 February of a common year and of 1900 (not a leap year).
    assert_eq!(err(id, &with_check("35010219900230123")), Invalid::Date);
    assert_eq!(err(id, &with_check("35010219900229123")), Invalid::Date);
    assert_eq!(err(id, &with_check("35010219000229123")), Invalid::Date);
    assert_eq!(err(id, &with_check("35010219901301123")), Invalid::Date);
    assert_eq!(err(id, &with_check("35010219900100123")), Invalid::Date);
    assert_eq!(err(id, &with_check("35010218991231123")), Invalid::Date);
    // 2000 is a leap year; 1900-01-01 is the earliest day accepted.
    let leap = with_check("35010220000229123");
    assert_eq!(ok(id, &leap), leap);
    let first = with_check("35010219000101123");
    assert_eq!(ok(id, &first), first);
    // The 15-digit form is checked too: 1990-02-30.
    assert_eq!(err(id, "350102900230123"), Invalid::Date);
}

#[test]
fn resident_id_future_birth_date_is_rejected() {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let today = i64::try_from((secs + 8 * 3600) / 86_400).unwrap();
    let date = |days: i64| {
        let (y, m, d) = resident_id::civil_from_days(days);
        format!("350102{y:04}{m:02}{d:02}123")
    };
    assert_eq!(
        err(Class::CnResidentId, &with_check(&date(today + 2))),
        Invalid::Date
    );
    assert_eq!(
        err(Class::CnResidentId, &with_check(&date(today + 400))),
        Invalid::Date
    );
    let born_yesterday = with_check(&date(today - 1));
    assert_eq!(ok(Class::CnResidentId, &born_yesterday), born_yesterday);
}

#[test]
fn civil_from_days_known_dates() {
    assert_eq!(resident_id::civil_from_days(0), (1970, 1, 1));
    assert_eq!(resident_id::civil_from_days(11_016), (2000, 2, 29));
    assert_eq!(resident_id::civil_from_days(-25_567), (1900, 1, 1));
    assert_eq!(resident_id::civil_from_days(19_723), (2024, 1, 1));
}

#[test]
fn resident_permits_and_foreigner_ids_use_the_same_check() {
    for first17 in [
        "81000019900307123",
        "82000019900307123",
        "83000019900307123",
        "93350219900307123",
    ] {
        let full = with_check(first17);
        assert_eq!(ok(Class::CnResidentId, &full), full);
    }
}

// ---- uscc ----

#[test]
fn uscc_check_and_pilot_codes() {
    let u = Class::Uscc;
    assert_eq!(ok(u, "91350100M000100Y43"), "91350100M000100Y43");
    assert_eq!(flag(u, "91350100M000100Y43"), None);
    assert_eq!(ok(u, "91350100m000100y43"), "91350100M000100Y43");
    assert_eq!(
        ok(u, "９１３５０１００Ｍ０００１００Ｙ４３"),
        "91350100M000100Y43"
    );
    assert_eq!(ok(u, "9135 0100 M000 100Y 43"), "91350100M000100Y43");
    assert_eq!(uscc::check_char(b"91350100M000100Y4"), Some(b'3'));
    for pilot in [
        "91350100M0001TGQXM",
        "91350211M0000XUF46",
        "91350203M0001FUE2P",
    ] {
        assert_eq!(ok(u, pilot), pilot);
        assert_eq!(flag(u, pilot), Some(Flag::ChecksumFailed), "{pilot}");
    }
    assert_eq!(flag(u, "91350100M000100Y44"), Some(Flag::ChecksumFailed));
}

#[test]
fn uscc_rejections() {
    let u = Class::Uscc;
    // I, O, S, V and Z are outside the alphabet.
    assert_eq!(err(u, "91350100M00010OY43"), Invalid::Charset);
    assert_eq!(err(u, "91350100I000100Y43"), Invalid::Charset);
    assert_eq!(err(u, "91350100Z000100Y43"), Invalid::Charset);
    assert_eq!(err(u, "91350100M000100Y4"), Invalid::Length);
    assert_eq!(err(u, "91350100M000100Y433"), Invalid::Length);
    assert_eq!(err(u, " "), Invalid::Empty);
}

// ---- org_code ----

#[test]
fn org_code_examples() {
    let o = Class::OrgCode;
    assert_eq!(ok(o, "D2143569-X"), "D2143569-X");
    assert_eq!(ok(o, "d2143569x"), "D2143569-X");
    assert_eq!(ok(o, "Ｄ２１４３５６９－Ｘ"), "D2143569-X");
    assert_eq!(ok(o, "12345678-8"), "12345678-8");
    assert_eq!(ok(o, "123456788"), "12345678-8");
    assert_eq!(err(o, "12345678-9"), Invalid::Checksum);
    assert_eq!(err(o, "D2143569-0"), Invalid::Checksum);
    assert_eq!(err(o, "1234567-8"), Invalid::Length);
    assert_eq!(err(o, "12345678-88"), Invalid::Length);
    assert_eq!(err(o, "1234567*-8"), Invalid::Charset);
    assert_eq!(org_code::check_char(b"D2143569"), Some(b'X'));
}

// ---- phone ----

#[test]
fn mobile_spellings_share_one_value() {
    let variants = [
        "+86 138 0013 8000",
        "＋８６ １３８ ００１３ ８０００",
        "+8613800138000",
        "008613800138000",
        "0086 138-0013-8000",
        "8613800138000",
        "13800138000",
        "138-0013-8000",
        "(+86) 138 0013 8000",
        "138.0013.8000",
        "138\u{2014}0013\u{2014}8000",
    ];
    for v in variants {
        assert_eq!(ok(Class::Phone, v), "+8613800138000", "{v}");
    }
}

#[test]
fn mobile_prefixes() {
    let p = Class::Phone;
    for bad in [
        "15400138000",
        "17900138000",
        "19400138000",
        "14400138000",
        "17410001234",
        "16300138000",
        "16110001234",
    ] {
        assert_eq!(err(p, bad), Invalid::Prefix, "{bad}");
    }
    for good in [
        "13000138000",
        "14500138000",
        "14700138000",
        "15300138000",
        "15500138000",
        "16200138000",
        "16700138000",
        "17000138000",
        "17400012345",
        "16105924322",
        "17800138000",
        "18900138000",
        "19200138000",
        "19900138000",
    ] {
        assert_eq!(ok(p, good), format!("+86{good}"), "{good}");
    }
    assert_eq!(err(p, "1380013800"), Invalid::Length);
    assert_eq!(err(p, "138001380001"), Invalid::Length);
}

#[test]
fn fixed_lines_in_fujian_and_elsewhere() {
    let p = Class::Phone;
    // Fuzhou and Quanzhou: 8-digit locals.
    assert_eq!(ok(p, "0591-28088788"), "+8659128088788");
    assert_eq!(ok(p, "(0591) 2808 8788"), "+8659128088788");
    assert_eq!(ok(p, "+86 591 2808 8788"), "+8659128088788");
    assert_eq!(ok(p, "+86 (0)591 2808 8788"), "+8659128088788");
    assert_eq!(err(p, "0591-2808878"), Invalid::Length);
    assert_eq!(ok(p, "0595-22345678"), "+8659522345678");
    assert_eq!(err(p, "0595-2234567"), Invalid::Length);
    // The other Fujian cities: 7-digit locals.
    for area in ["0592", "0593", "0594", "0596", "0597", "0598", "0599"] {
        assert_eq!(
            ok(p, &format!("{area}-5123456")),
            format!("+86{}5123456", &area[1..])
        );
        assert_eq!(
            err(p, &format!("{area}-51234567")),
            Invalid::Length,
            "{area}"
        );
    }
    // Two-digit area codes: 8-digit locals.
    assert_eq!(ok(p, "010-62345678"), "+861062345678");
    assert_eq!(ok(p, "021 6234 5678"), "+862162345678");
    assert_eq!(err(p, "010-6234567"), Invalid::Length);
    // Other three-digit area codes: the lengths libphonenumber gives them
    // (Shenzhen 8, Urumqi 7, Yanbian either); codes that do not exist and
    // wrong lengths are refused.
    assert_eq!(ok(p, "0755-86123456"), "+8675586123456");
    assert_eq!(err(p, "0755-8612345"), Invalid::Length);
    assert_eq!(ok(p, "0991-2345678"), "+869912345678");
    assert_eq!(ok(p, "0433-2345678"), "+864332345678");
    assert_eq!(ok(p, "0433-23456789"), "+8643323456789");
    assert_eq!(err(p, "0311-2345678"), Invalid::Length);
    for nowhere in ["0300-2345678", "026-23456789", "0590-2234567"] {
        assert_eq!(err(p, nowhere), Invalid::Prefix, "{nowhere}");
    }
    // Locals never start with 0 or 1.
    assert_eq!(err(p, "010-12345678"), Invalid::Format);
    assert_eq!(err(p, "0591-08088788"), Invalid::Format);
}

#[test]
fn extensions_are_kept_apart() {
    let p = Class::Phone;
    for v in [
        "0591-28088788转123",
        "0591-28088788 分机 123",
        "0591-28088788 ext. 123",
        "0591-28088788 EXT:123",
        "0591-28088788x123",
        "0591-28088788 X 123",
        "0591-28088788#123",
        "+86 591 2808 8788;ext=123",
        "＋８６ ５９１ ２８０８ ８７８８ 转 １２３",
        "0591-28088788 分机号 123",
        "0591-28088788 分机号：123",
        "0591-28088788转分机123",
    ] {
        assert_eq!(ok(p, v), "+8659128088788;ext=123", "{v}");
    }
    assert_eq!(err(p, "0591-28088788转"), Invalid::Format);
    assert_eq!(err(p, "0591-28088788转abc"), Invalid::Charset);
    assert_eq!(err(p, "0591-28088788转12345678901"), Invalid::Format);
    assert_eq!(mask(p, "+8659128088788;ext=123"), "0591****8788");
}

#[test]
fn service_numbers_and_foreign_numbers() {
    let p = Class::Phone;
    assert_eq!(ok(p, "400-123-4567"), "+864001234567");
    assert_eq!(ok(p, "800 123 4567"), "+868001234567");
    assert_eq!(ok(p, "+86 400 123 4567"), "+864001234567");
    assert_eq!(err(p, "400-123-456"), Invalid::Length);
    assert_eq!(err(p, "+1 415 555 0100"), Invalid::Prefix);
    assert_eq!(err(p, "0044 20 7946 0958"), Invalid::Prefix);
    assert_eq!(err(p, "+852 2345 6789"), Invalid::Prefix);
    assert_eq!(err(p, "138 0013 800O"), Invalid::Charset);
    assert_eq!(err(p, "+"), Invalid::Format);
    assert_eq!(err(p, ""), Invalid::Empty);
    assert_eq!(err(p, &"1".repeat(30)), Invalid::Length);
}

// ---- email ----

#[test]
fn email_case_idna_and_token_form() {
    let e = Class::Email;
    let n = normalize(e, "Chen.Ming+tag@Example.COM").unwrap();
    assert_eq!(n.value(), "Chen.Ming+tag@example.com");
    assert_eq!(n.token_form(), "chen.ming+tag@example.com");
    let lower = normalize(e, "a@x.cn").unwrap();
    let upper = normalize(e, "A@X.cn").unwrap();
    assert_eq!(lower.token_form(), upper.token_form());
    assert_eq!(upper.value(), "A@x.cn");
    assert_eq!(lower.token_form(), "a@x.cn");
    assert_eq!(ok(e, "用户@例子.中国"), "用户@xn--fsqu00a.xn--fiqs8s");
    assert_eq!(ok(e, "用户＠例子。中国"), "用户@xn--fsqu00a.xn--fiqs8s");
    assert_eq!(ok(e, "chen＠example.com"), "chen@example.com");
    assert_eq!(ok(e, "chen@ＥＸＡＭＰＬＥ.com"), "chen@example.com");
    assert_eq!(
        ok(e, "chen@xn--fsqu00a.xn--fiqs8s"),
        "chen@xn--fsqu00a.xn--fiqs8s"
    );
    assert_eq!(ok(e, "  12345@qq.com "), "12345@qq.com");
}

#[test]
fn email_rejections() {
    let e = Class::Email;
    assert_eq!(err(e, ""), Invalid::Empty);
    assert_eq!(err(e, "chen.example.com"), Invalid::Format);
    assert_eq!(err(e, "a@b@example.com"), Invalid::Format);
    assert_eq!(err(e, "@example.com"), Invalid::Format);
    assert_eq!(err(e, "chen@localhost"), Invalid::Format);
    assert_eq!(err(e, "chen@example..com"), Invalid::Format);
    assert_eq!(err(e, "chen@-example.com"), Invalid::Format);
    assert_eq!(err(e, "chen@exa_mple.com"), Invalid::Format);
    assert_eq!(err(e, "chen ming@example.com"), Invalid::Charset);
    assert_eq!(
        err(e, &format!("{}@example.com", "a".repeat(65))),
        Invalid::TooLong
    );
    let long_domain = format!("a@{}.cn", vec!["b".repeat(60); 5].join("."));
    assert_eq!(err(e, &long_domain), Invalid::TooLong);
}

// ---- passport and bank card ----

#[test]
fn passport_patterns() {
    let p = Class::Passport;
    for good in [
        "E12345678",
        "EA1234567",
        "G12345678",
        "DE1234567",
        "SE1234567",
        "PE1234567",
        "K12345678",
        "MA1234567",
        "H12345678",
        "H1234567890",
        "M12345678",
        "12345678",
    ] {
        assert_eq!(ok(p, good), good);
    }
    assert_eq!(ok(p, "e 1234 5678"), "E12345678");
    assert_eq!(ok(p, "Ｅ１２３４５６７８"), "E12345678");
    assert_eq!(err(p, "EI1234567"), Invalid::Format);
    assert_eq!(err(p, "EO1234567"), Invalid::Format);
    assert_eq!(err(p, "E1234567"), Invalid::Format);
    assert_eq!(err(p, "X12345678"), Invalid::Format);
    assert_eq!(err(p, "H123456789"), Invalid::Format);
    assert_eq!(err(p, "E1234567*"), Invalid::Charset);
}

#[test]
fn bank_card_luhn_is_only_flagged() {
    let b = Class::BankCard;
    assert_eq!(ok(b, "4111 1111 1111 1111"), "4111111111111111");
    assert_eq!(flag(b, "4111111111111111"), None);
    assert_eq!(flag(b, "4111111111111112"), Some(Flag::ChecksumFailed));
    assert_eq!(flag(b, "6222021234567890128"), None);
    assert_eq!(
        ok(b, "６２２２-０２１２-３４５６-７８９０-１２８"),
        "6222021234567890128"
    );
    assert_eq!(err(b, "41111111111"), Invalid::Length);
    assert_eq!(err(b, "41111111111111111111"), Invalid::Length);
    assert_eq!(err(b, "4111 1111 1111 111A"), Invalid::Charset);
    assert!(misc::luhn_ok(b"79927398713"));
    assert!(!misc::luhn_ok(b"79927398710"));
}

// ---- name ----

#[test]
fn names_normalize() {
    let n = Class::Name;
    assert_eq!(ok(n, "陈明"), "陈明");
    assert_eq!(ok(n, "  Zhang \t  San  "), "Zhang San");
    assert_eq!(ok(n, "Ｚｈａｎｇ　Ｓａｎ"), "Zhang San");
    for dot in [
        '\u{30FB}', '\u{2022}', '\u{2027}', '\u{2219}', '\u{FF65}', '\u{00B7}',
    ] {
        assert_eq!(
            ok(n, &format!("阿依古丽{dot}买买提")),
            "阿依古丽·买买提",
            "{dot:?}"
        );
    }
    assert_eq!(ok(n, "阿依古丽 · 买买提"), "阿依古丽·买买提");
    assert_eq!(ok(n, "林〇"), "林〇");
    assert_eq!(err(n, "陈明1"), Invalid::Charset);
    assert_eq!(err(n, "陈明１"), Invalid::Charset);
    assert_eq!(err(n, "陈\u{7}明"), Invalid::Charset);
    assert_eq!(err(n, " \t "), Invalid::Empty);
    assert_eq!(ok(n, &"陈".repeat(64)).chars().count(), 64);
    assert_eq!(err(n, &"陈".repeat(65)), Invalid::TooLong);
    // Outside the BMP: one character each.
    assert_eq!(ok(n, &"𠀀".repeat(64)).chars().count(), 64);
    assert_eq!(err(n, &"𠀀".repeat(65)), Invalid::TooLong);
}

#[test]
fn name_masks() {
    let n = Class::Name;
    assert_eq!(mask(n, "陈明"), "陈*");
    assert_eq!(mask(n, "陈小明"), "陈**");
    assert_eq!(mask(n, "欧阳娜娜"), "欧阳**");
    assert_eq!(mask(n, "司马光"), "司马*");
    assert_eq!(mask(n, "諸葛亮"), "諸葛*");
    assert_eq!(mask(n, "陈"), "*");
    assert_eq!(mask(n, "欧阳"), "欧*");
    assert_eq!(mask(n, "𠀀𠀁𠀂"), "𠀀**");
    assert_eq!(mask(n, "阿依古丽·买买提"), "阿***·***");
    assert_eq!(mask(n, "Zhang San"), "Z**** S**");
    assert_eq!(mask(n, "Jean-Luc Picard"), "J***-L** P*****");
    // Initials only: the mask must still hide something (found by fuzzing).
    assert_eq!(mask(n, "J"), "*");
    assert_eq!(mask(n, "J K"), "J *");
    assert_eq!(mask(n, "A-B·C"), "A-*·*");
    assert_eq!(mask(n, ""), "***");
    assert!(name::COMPOUND_SURNAMES.len() >= 20);
}

// ---- ip ----

#[test]
fn ip_addresses() {
    let i = Class::Ip;
    assert_eq!(ok(i, "192.168.1.10"), "192.168.1.10");
    assert_eq!(ok(i, " １９２.１６８.１.１０ "), "192.168.1.10");
    assert_eq!(err(i, "192.168.001.010"), Invalid::Format);
    assert_eq!(err(i, "256.1.1.1"), Invalid::Format);
    assert_eq!(err(i, "192.168.1"), Invalid::Format);
    assert_eq!(err(i, "192.168.1.1%eth0"), Invalid::Format);
    assert_eq!(ok(i, "::ffff:192.168.1.10"), "192.168.1.10");
    assert_eq!(ok(i, "::FFFF:C0A8:010A"), "192.168.1.10");
    assert_eq!(
        ok(i, "2001:0DB8:0000:0000:0000:0000:0000:0001"),
        "2001:db8::1"
    );
    assert_eq!(ok(i, "2001:db8:0:0:1:0:0:1"), "2001:db8::1:0:0:1");
    assert_eq!(ok(i, "fe80::1%eth0"), "fe80::1");
    assert_eq!(ok(i, "fe80::1%2"), "fe80::1");
    assert_eq!(err(i, "fe80::1%"), Invalid::Format);
    assert_eq!(err(i, "fe80::g"), Invalid::Format);
    assert_eq!(err(i, ""), Invalid::Empty);
    assert_eq!(err(i, &"1".repeat(100)), Invalid::TooLong);
}

#[test]
fn ip_masks() {
    assert_eq!(mask(Class::Ip, "192.168.1.10"), "192.168.1.*");
    assert_eq!(mask(Class::Ip, "2001:db8:1:2::5"), "2001:db8:1::/48");
    assert_eq!(mask(Class::Ip, "2001:db8::1"), "2001:db8::/48");
    assert_eq!(mask(Class::Ip, "not an ip"), "***");
}

// ---- address and text ----

#[test]
fn addresses_and_text() {
    let a = Class::Address;
    assert_eq!(
        ok(a, "  福建省福州市鼓楼区\u{3000}\u{3000}五四路 １２３ 号 "),
        "福建省福州市鼓楼区 五四路 123 号"
    );
    assert_eq!(err(a, "福建省\u{0}福州市"), Invalid::Charset);
    assert_eq!(err(a, "   "), Invalid::Empty);
    assert_eq!(ok(a, &"a".repeat(4096)).len(), 4096);
    assert_eq!(err(a, &"a".repeat(4097)), Invalid::TooLong);
    let t = Class::Text;
    assert_eq!(ok(t, "  第一行\n第二行\t！ "), "第一行\n第二行\t!");
    assert_eq!(err(t, "\n \t"), Invalid::Empty);
    assert_eq!(ok(t, &"a".repeat(65_536)).len(), 65_536);
    assert_eq!(err(t, &"a".repeat(65_537)), Invalid::TooLong);
}

// ---- masks of SPEC.md and PII-FORMATS.md ----

#[test]
fn masks() {
    assert_eq!(mask(Class::Phone, "+8613800138000"), "138****8000");
    assert_eq!(mask(Class::Phone, "+8659128088788"), "0591****8788");
    assert_eq!(mask(Class::Phone, "+865935123456"), "0593***3456");
    assert_eq!(mask(Class::Phone, "+861062345678"), "010****5678");
    assert_eq!(mask(Class::Phone, "+864001234567"), "400***4567");
    assert_eq!(
        mask(Class::CnResidentId, "350102199003071234"),
        "350102********1234"
    );
    assert_eq!(mask(Class::Email, "chen@example.com"), "c***@example.com");
    assert_eq!(
        mask(Class::Email, "用户@xn--fsqu00a.xn--fiqs8s"),
        "用***@xn--fsqu00a.xn--fiqs8s"
    );
    assert_eq!(
        mask(Class::BankCard, "6222021234567890128"),
        "622202*********0128"
    );
    assert_eq!(
        mask(Class::BankCard, "4111111111111111"),
        "411111******1111"
    );
    assert_eq!(mask(Class::Passport, "E12345678"), "E*****678");
    assert_eq!(
        mask(Class::Uscc, "91350100M000100Y43"),
        "91************0Y43"
    );
    assert_eq!(mask(Class::OrgCode, "D2143569-X"), "D2******-X");
    assert_eq!(
        mask(Class::Address, "福建省福州市鼓楼区五四路123号"),
        "福建省福州市********"
    );
    assert_eq!(mask(Class::Address, "福建省福州市鼓楼"), "福建省福州市**");
    assert_eq!(mask(Class::Address, "鼓楼"), "鼓*");
    assert_eq!(mask(Class::Text, "anything"), "***");
}

#[test]
fn masks_never_fail_on_odd_input() {
    for class in Class::ALL {
        for odd in ["", "x", "+86", "@", ";", "+86;ext=1", "𠀀"] {
            let m = mask(class, odd);
            assert!(!m.is_empty(), "{class} {odd:?}");
        }
    }
}

// ---- properties every class keeps ----

#[test]
fn normalized_values_are_fixed_points() {
    let samples = [
        (Class::Name, "阿依古丽 ・ 买买提"),
        (Class::CnResidentId, "350102900307123"),
        (Class::Phone, "0591-28088788 转 123"),
        (Class::Phone, "＋８６ １３８ ００１３ ８０００"),
        (Class::Email, "用户@例子.中国"),
        (Class::Email, "Chen@Example.COM"),
        (Class::Uscc, "91350100m0001tgqxm"),
        (Class::OrgCode, "d2143569x"),
        (Class::Passport, "e 1234 5678"),
        (Class::BankCard, "4111 1111 1111 1111"),
        (Class::Ip, "::ffff:192.168.1.10"),
        (Class::Ip, "2001:0DB8::0001%eth0"),
        (Class::Address, " 福建省  福州市 "),
        (Class::Text, " hello "),
    ];
    for (class, raw) in samples {
        let once = normalize(class, raw).unwrap();
        let twice = normalize(class, once.value()).unwrap();
        assert_eq!(once.value(), twice.value(), "{class}");
        assert_eq!(once.token_form(), twice.token_form(), "{class}");
        assert_eq!(once.flag(), twice.flag(), "{class}");
    }
}

#[test]
fn debug_never_shows_the_value() {
    let id = normalize(Class::CnResidentId, "350102199003071234").unwrap();
    let shown = format!("{id:?}");
    assert!(shown.contains("[REDACTED]"));
    assert!(!shown.contains("350102"));
    assert!(!shown.contains("1234"));
    let email = normalize(Class::Email, "Chen@Example.COM").unwrap();
    let shown = format!("{email:?} {email:#?}");
    assert!(!shown.to_lowercase().contains("chen"));
    assert!(!shown.contains("example"));
    let card = normalize(Class::BankCard, "4111111111111112").unwrap();
    let shown = format!("{card:?}");
    assert!(!shown.contains("4111"));
    assert!(shown.contains("ChecksumFailed"));
    // Errors are closed enums: nothing of the value can be in them.
    let e = err(Class::CnResidentId, "350102199003071235");
    assert!(!format!("{e:?} {e}").contains("3501"));
}

#[test]
fn same_digits_in_two_classes_stay_apart_by_tag() {
    let card = normalize(Class::BankCard, "350102199003071234").unwrap();
    let id = normalize(Class::CnResidentId, "350102199003071234").unwrap();
    assert_eq!(card.token_form(), id.token_form());
    assert_ne!(Class::BankCard.tag(), Class::CnResidentId.tag());
}

/// A small deterministic generator, so the sweeps below need no crate.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }
}

#[test]
fn any_separators_anywhere_give_one_value() {
    let separators = [
        " ", "-", "\u{2010}", "\u{2015}", ".", "(", ")", "（", "）", "/", "·", "\u{3000}", "－",
    ];
    let cases = [
        (Class::CnResidentId, "350102199003071234"),
        (Class::Uscc, "91350100M000100Y43"),
        (Class::OrgCode, "D2143569X"),
        (Class::BankCard, "6222021234567890128"),
        (Class::Passport, "E12345678"),
        (Class::Phone, "13800138000"),
    ];
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for (class, plain) in cases {
        let want = ok(class, plain);
        for _ in 0..200 {
            let mut spaced = String::new();
            for c in plain.chars() {
                spaced.push(c);
                if rng.below(3) == 0 {
                    spaced.push_str(separators[rng.below(separators.len())]);
                }
            }
            assert_eq!(ok(class, &spaced), want, "{class} {spaced:?}");
        }
    }
}

#[test]
fn random_input_never_panics_and_accepted_values_are_stable() {
    let alphabet: Vec<char> =
        "0123456789+-.@:;#xX转分机 ()（）abcEfgZ%·・０１８６＠．。例子中国陈\u{0}\u{7}\u{3000}𠀀"
            .chars()
            .collect();
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    for _ in 0..20_000 {
        let len = rng.below(24);
        let raw: String = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        for class in Class::ALL {
            if let Ok(n) = normalize(class, &raw) {
                let again = normalize(class, n.value()).unwrap_or_else(|e| {
                    panic!("{class} {raw:?}: normalized value rejected: {e:?}")
                });
                assert_eq!(again.value(), n.value(), "{class} {raw:?}");
                assert!(!mask(class, n.value()).is_empty());
            }
        }
    }
}

#[test]
fn generalizations_keep_nothing_identifying() {
    use super::generalize;
    assert_eq!(
        generalize(Class::CnResidentId, "350102199003071234"),
        "province=35;birth_year=1990"
    );
    assert_eq!(generalize(Class::Phone, "+8613800138000"), "block=138");
    assert_eq!(
        generalize(Class::Email, "chen.ming@example.com"),
        "domain=example.com"
    );
    assert_eq!(generalize(Class::Ip, "203.0.113.7"), "net=203.0.0.0/16");
    assert_eq!(generalize(Class::Ip, "2001:db8::1"), "net=2001:db8::/32");
    // RFC 5952: zero groups compressed.
    assert_eq!(generalize(Class::Ip, "fe80::1"), "net=fe80::/32");
    assert_eq!(generalize(Class::Ip, "::1"), "net=::/32");
    assert_eq!(generalize(Class::Name, "陈明"), "");
    assert_eq!(generalize(Class::CnResidentId, "short"), "");
    assert_eq!(generalize(Class::Phone, "+1555"), "");
}

#[test]
fn token_ranges_never_pass_for_real_values() {
    // Resident-ID tokens start `000`: no address code starts with 0, even
    // with a valid check character and a real birth date.
    assert_eq!(
        err(Class::CnResidentId, &with_check("00000019900307123")),
        Invalid::Format
    );
    assert_eq!(
        err(Class::CnResidentId, &with_check("01234519900307123")),
        Invalid::Format
    );
    // USCC tokens start with letters no registering authority uses.
    for code in [
        "000000000000000000",
        "B1350100M000100Y41",
        "P9350100M000100Y4U",
    ] {
        assert_eq!(err(Class::Uscc, code), Invalid::Format, "{code}");
    }
    for first in ["1", "9", "A", "N", "Y"] {
        let code = format!("{first}1350100M000100Y4");
        let code = format!(
            "{code}{}",
            char::from(uscc::check_char(code.as_bytes()).unwrap())
        );
        assert_eq!(ok(Class::Uscc, &code), code);
    }
}

#[test]
fn invisible_characters_make_no_second_value() {
    for raw in [
        "陈\u{200B}明",
        "陈\u{200D}明",
        "陈\u{00AD}明",
        "陈明\u{FEFF}",
        "\u{202E}陈明",
        "陈 明",
        "陈\u{3000}明",
    ] {
        assert_eq!(ok(Class::Name, raw), "陈明", "{raw:?}");
    }
    // Stripped before NFKC, so a mark it kept apart still composes, and
    // normalizing again changes nothing.
    let once = ok(Class::Name, "Jose\u{200B}\u{301}");
    assert_eq!(once, "José");
    assert_eq!(ok(Class::Name, &once), once);
    // A space between Latin words, or beside a Latin word, stays.
    assert_eq!(ok(Class::Name, "Zhang  San"), "Zhang San");
    assert_eq!(ok(Class::Name, "陈 Ming"), "陈 Ming");
    assert_eq!(
        ok(Class::Phone, "138\u{200B}0013\u{2060}8000"),
        "+8613800138000"
    );
    assert_eq!(
        ok(Class::CnResidentId, "\u{202D}350102199003071234"),
        "350102199003071234"
    );
    // An e-mail local part is kept as entered, so one is refused instead.
    assert_eq!(
        err(Class::Email, "\u{202E}chen@example.com"),
        Invalid::Charset
    );
    assert_eq!(
        err(Class::Email, "ch\u{200B}en@example.com"),
        Invalid::Charset
    );
}
