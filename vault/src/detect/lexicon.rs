//! The context lexicon: form labels, honorifics, and the words that say what
//! a nearby number is (or is not), found in one Aho-Corasick pass over the
//! text. Invariant: `hits` returns non-overlapping hits in ascending byte
//! order, and an ASCII keyword never matches inside a longer ASCII word, so
//! `IP` is not found in `ZIP`.

use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

use crate::classes::Class;

/// What a keyword says about the text around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cue {
    /// A label or phrase after which a person's name follows (`姓名`, `我叫`).
    NameBefore,
    /// An honorific that follows a name (`先生`, `女士`).
    NameAfter,
    /// A form label after which an address follows (`地址`, `住址`).
    Address,
    /// A word naming the class of the value that follows (`手机`, `身份证`).
    Number(Class),
    /// A word saying the number that follows is no PII (`订单号`, `金额`).
    Anti,
    /// A device-number label (`IMEI`): the number that follows is no
    /// first-generation resident ID, whatever its digits.
    Device,
}

/// One keyword occurrence, in byte offsets.
#[derive(Clone, Copy, Debug)]
pub(super) struct Hit {
    pub cue: Cue,
    pub start: usize,
    pub end: usize,
}

const NAME_BEFORE: &[&str] = &[
    "姓名",
    "名字",
    "我叫",
    "我是",
    "他叫",
    "她叫",
    "名叫",
    "本人",
    "联系人",
    "联络人",
    "申请人",
    "被申请人",
    "法定代表人",
    "法人代表",
    "法人",
    "经办人",
    "收件人",
    "收货人",
    "寄件人",
    "负责人",
    "代理人",
    "委托人",
    "患者",
    "持卡人",
    "户主",
    "监护人",
    "担保人",
    "借款人",
    "投诉人",
    "举报人",
    "当事人",
    "签字人",
    "审批人",
    "户名",
    "开户名",
    "账户名",
    "联系人姓名",
    "客户姓名",
    "真实姓名",
    "学生姓名",
    "员工姓名",
    "乘客",
    "就诊人",
    "报案人",
    "受益人",
    "被保险人",
    "投保人",
    "业主",
    "姓 名",
    "姓  名",
    "姓\u{3000}名",
    "My name is",
    "Name",
    "爱人",
    "我爱人",
    "妻子",
    "丈夫",
    "家属",
    "经营者",
    "接待我的是",
    "接待人员",
    "工作人员",
    "用户：",
    "用户:",
    "反映人",
    "来电人",
    "来访人",
    "市民",
    "母亲",
    "父亲",
    "儿子",
    "女儿",
    "家老人",
    "同事",
    "邻居",
    "朋友",
    "Applicant",
    "Contact person",
    "Contact",
    "I am",
    "This is",
];

const NAME_AFTER: &[&str] = &[
    "先生", "女士", "小姐", "老师", "同志", "同学", "经理", "律师", "教授", "医生", "主任", "师傅",
    "阿姨", "总监", "博士", "您好", "科长", "处长", "局长", "所长", "队长", "院长", "部长", "书记",
];

const ADDRESS: &[&str] = &[
    "地址",
    "住址",
    "联系地址",
    "通讯地址",
    "通信地址",
    "家庭地址",
    "家庭住址",
    "收货地址",
    "寄件地址",
    "收件地址",
    "户籍地址",
    "户籍所在地",
    "居住地址",
    "现住址",
    "现居住地址",
    "详细地址",
    "注册地址",
    "办公地址",
    "经营地址",
    "住所",
    "住所地",
    "居住地",
    "送达地址",
    "邮寄地址",
    "Address",
    "家住",
    "住在",
    "居住在",
    "现居住在",
    "现居住于",
    "住于",
    "，住",
    "，住址",
    "，地址",
    "，住所",
    "住 址",
    "住  址",
    "地 址",
    "地  址",
    "家在",
    "户籍在",
    "租住在",
    "坐落于",
    "坐落在",
];

const RESIDENT_ID: &[&str] = &[
    "身份证",
    "身份证号",
    "身份证号码",
    "公民身份号码",
    "身份号码",
    "证件号",
    "证件号码",
    "居民身份证",
    "居住证",
    "永久居留",
    "身份证件",
    "证件",
    "身份证编号",
    "居民身份证编号",
    "身份证件编号",
    "证件编号",
    "证件编码",
    "身 份 证 号",
    "身 份 证",
    "公民身份 号码",
    "ID No",
    "ID Card",
];

const PHONE: &[&str] = &[
    "电话",
    "手机",
    "手机号",
    "手机号码",
    "联系电话",
    "联系方式",
    "座机",
    "固话",
    "传真",
    "电话号码",
    "致电",
    "拨打",
    "来电",
    "热线",
    "Tel",
    "Phone",
    "Mobile",
    "Fax",
    "分机",
];

const EMAIL: &[&str] = &[
    "邮箱",
    "电子邮箱",
    "电子邮件",
    "邮件",
    "邮箱地址",
    "Email",
    "E-mail",
    "Mail",
];

const USCC: &[&str] = &["统一社会信用代码", "社会信用代码", "信用代码", "USCC"];

const ORG_CODE: &[&str] = &["组织机构代码", "机构代码", "组织代码"];

const PASSPORT: &[&str] = &[
    "护照",
    "护照号",
    "护照号码",
    "护照编号",
    "通行证",
    "台胞证",
    "回乡证",
    "旅行证",
    "Passport",
];

const BANK_CARD: &[&str] = &[
    "银行卡",
    "银行卡号",
    "银行卡编号",
    "卡片编号",
    "卡号",
    "账号",
    "帐号",
    "银行账号",
    "银行账户",
    "账户",
    "储蓄卡",
    "信用卡",
    "借记卡",
    "收款账号",
    "Card",
];

const IP: &[&str] = &["IP", "IP地址", "IPv4", "IPv6", "IP Address"];

/// Device-number labels: a 15-digit IMEI can read as a first-generation
/// resident ID (a province code, then a date). Only that reading is
/// dropped after one, not a phone (`串号` is also in `这串号码`).
const DEVICE: &[&str] = &["IMEI", "MEID", "串号", "设备号"];

const ANTI: &[&str] = &[
    "订单号",
    "订单编号",
    "订单",
    "单号",
    "运单号",
    "快递单号",
    "物流单号",
    "流水号",
    "交易号",
    "交易单号",
    "编号",
    "工单号",
    "合同号",
    "发票号",
    "批次号",
    "序列号",
    "版本",
    "版本号",
    "验证码",
    "邮编",
    "邮政编码",
    "金额",
    "价格",
    "总价",
    "合计",
    "余额",
    "工号",
    "学号",
    "会员号",
    "编码",
    "条形码",
    "条码",
    "型号",
    "Order",
    "Version",
    "Tracking",
    "Invoice",
    "日期",
    "时间",
    "Date",
    "SN",
    "ISBN",
    "Amount",
    "¥",
    "￥",
    "$",
    "RMB",
];

pub(super) struct Lexicon {
    automaton: AhoCorasick,
    cues: Vec<Cue>,
}

static LEXICON: LazyLock<Option<Lexicon>> = LazyLock::new(Lexicon::build);

impl Lexicon {
    fn build() -> Option<Lexicon> {
        let groups: [(&[&str], Cue); 13] = [
            (NAME_BEFORE, Cue::NameBefore),
            (NAME_AFTER, Cue::NameAfter),
            (ADDRESS, Cue::Address),
            (RESIDENT_ID, Cue::Number(Class::CnResidentId)),
            (PHONE, Cue::Number(Class::Phone)),
            (EMAIL, Cue::Number(Class::Email)),
            (USCC, Cue::Number(Class::Uscc)),
            (ORG_CODE, Cue::Number(Class::OrgCode)),
            (PASSPORT, Cue::Number(Class::Passport)),
            (BANK_CARD, Cue::Number(Class::BankCard)),
            (IP, Cue::Number(Class::Ip)),
            (ANTI, Cue::Anti),
            (DEVICE, Cue::Device),
        ];
        let mut patterns = Vec::new();
        let mut cues = Vec::new();
        for (words, cue) in groups {
            for w in words {
                patterns.push(*w);
                cues.push(cue);
            }
        }
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .ascii_case_insensitive(true)
            .kind(Some(AhoCorasickKind::DFA))
            .build(&patterns)
            .ok()?;
        Some(Lexicon { automaton, cues })
    }
}

/// Every keyword in `text`, in order. Empty only if the automaton could not
/// be built, which would make detection context-blind but still correct.
pub(super) fn hits(text: &str) -> Vec<Hit> {
    let Some(lex) = LEXICON.as_ref() else {
        return Vec::new();
    };
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    for m in lex.automaton.find_iter(text) {
        let (start, end) = (m.start(), m.end());
        let ascii = bytes.get(start).is_some_and(u8::is_ascii_alphanumeric);
        if ascii && (word_char(bytes, start.wrapping_sub(1)) || word_char(bytes, end)) {
            continue;
        }
        if let Some(&cue) = lex.cues.get(m.pattern().as_usize()) {
            out.push(Hit { cue, start, end });
        }
    }
    out
}

fn word_char(bytes: &[u8], i: usize) -> bool {
    bytes.get(i).is_some_and(u8::is_ascii_alphabetic)
}

/// How far before a value its cue may stand, in bytes (about ten Han
/// characters, or a label, a colon and some spaces).
const CUE_WINDOW: usize = 30;
/// How far before a number a word saying it is no PII may stand, in bytes:
/// a label's colon and a space (`订单号：`), not a clause away.
const ANTI_WINDOW: usize = 6;

/// What the nearest keyword before `start` says about the value there: a
/// number cue within [`CUE_WINDOW`] bytes, or an anti cue within
/// [`ANTI_WINDOW`], with no digit and no clause break between (a cue
/// belongs to the first value after it). Name and address cues are skipped.
pub(super) fn cue_before(text: &str, hits: &[Hit], start: usize) -> Option<Cue> {
    let idx = hits.partition_point(|h| h.end <= start);
    for h in hits.get(..idx)?.iter().rev().take(3) {
        let gap = start - h.end;
        if gap > CUE_WINDOW || !clean_gap(text.get(h.end..start)?) {
            return None;
        }
        match h.cue {
            Cue::Number(_) => return Some(h.cue),
            Cue::Anti | Cue::Device if gap <= ANTI_WINDOW => return Some(h.cue),
            _ => {}
        }
    }
    None
}

/// Whether the text between a cue and a value holds no digit and no clause
/// or line break.
fn clean_gap(gap: &str) -> bool {
    !gap.chars().any(|c| {
        c.is_ascii_digit()
            || ('０'..='９').contains(&c)
            || matches!(c, '\n' | '\r' | '；' | ';' | '，' | ',' | '。')
    })
}
