//! Chinese personal names, found only next to a cue: a form label or phrase
//! before (`姓名：`, `我叫`, `联系人`) or an honorific after (`先生`,
//! `女士`). Invariant: a name span is a surname from the lexicon (compound
//! surnames whole) plus at most two given-name characters, or a minority
//! name joined by middle dots after a label; it never includes the cue, a
//! punctuation mark or a stop character, and each cue costs a bounded look
//! at a few characters beside it.

use super::chars::is_han;
use super::lexicon::{Cue, Hit};
use super::Candidate;
use crate::classes::{Class, COMPOUND_SURNAMES};

/// Single-character surnames: the most common ~350 (with the traditional
/// forms of the commonest), less those that are mostly function words in
/// running text (和, 于, 但, 那, 由, ...), which would start false names.
const SURNAMES: [char; 379] = [
    '丁', '万', '丘', '丛', '严', '丰', '乐', '乔', '亓', '井', '亢', '仇', '付', '仝', '仲', '任',
    '伊', '伍', '伏', '何', '佘', '余', '佟', '侯', '俞', '修', '倪', '傅', '储', '党', '兰', '关',
    '冀', '冉', '农', '冯', '况', '冶', '冷', '冼', '凌', '刁', '刘', '劉', '劳', '勾', '包', '匡',
    '华', '卓', '单', '卜', '卞', '卢', '卫', '卿', '厉', '古', '史', '叶', '司', '吉', '向', '吕',
    '吳', '吴', '周', '呼', '哈', '唐', '喻', '嚴', '夏', '奉', '奚', '姚', '姜', '姬', '娄', '孔',
    '孙', '孟', '季', '孫', '宁', '安', '宋', '宗', '官', '宣', '宫', '宾', '寇', '封', '尉', '尚',
    '尤', '尧', '尹', '屈', '屠', '岑', '岳', '崔', '嵇', '左', '巩', '巫', '巴', '帅', '席', '常',
    '庄', '庞', '康', '廉', '廖', '张', '張', '彭', '徐', '惠', '慕', '戈', '戎', '成', '戚', '戴',
    '房', '扈', '揭', '敖', '文', '斯', '方', '於', '施', '明', '易', '昝', '晁', '晋', '晏', '景',
    '曲', '曹', '曾', '朱', '朴', '权', '李', '杜', '束', '杨', '杭', '林', '柏', '查', '柯', '柳',
    '柴', '栗', '栾', '桂', '桑', '梁', '梅', '植', '楊', '楚', '樊', '檀', '欧', '武', '段', '殷',
    '毕', '毛', '江', '池', '汤', '汪', '沈', '沙', '洪', '浦', '涂', '温', '游', '湛', '滕', '漆',
    '潘', '焦', '熊', '燕', '牛', '牟', '狄', '王', '班', '甄', '甘', '田', '申', '白', '皮', '盖',
    '盛', '盧', '瞿', '石', '祁', '祖', '祝', '禹', '秦', '程', '穆', '窦', '章', '童', '符', '简',
    '管', '米', '粟', '索', '纪', '练', '缪', '罗', '羅', '羊', '翁', '翟', '耿', '聂', '肖', '胡',
    '胥', '臧', '舒', '艾', '芦', '芮', '苏', '苑', '苗', '苟', '范', '茅', '茹', '荆', '荣', '莫',
    '葉', '葛', '董', '蒋', '蒙', '蒲', '蓝', '蔡', '蔣', '蔺', '蕭', '薄', '薛', '蘇', '虞', '衡',
    '袁', '裘', '裴', '褚', '覃', '解', '許', '詹', '謝', '譚', '许', '谈', '谌', '谢', '谭', '谷',
    '豆', '賈', '费', '贺', '贾', '赖', '赫', '赵', '趙', '路', '车', '辛', '辜', '边', '连', '迟',
    '逯', '邓', '邝', '邢', '邬', '邰', '邱', '邵', '邸', '邹', '郁', '郎', '郑', '郗', '郜', '郝',
    '郭', '鄒', '鄢', '鄧', '鄭', '金', '錢', '鍾', '钟', '钮', '钱', '闫', '闭', '闵', '闻', '阎',
    '阙', '阚', '阮', '阳', '阴', '陆', '陈', '陳', '陶', '陸', '隋', '雍', '雷', '霍', '靳', '鞠',
    '韋', '韓', '韦', '韩', '项', '顾', '颜', '饶', '馬', '馮', '马', '骆', '高', '魏', '鲁', '鲍',
    '鲜', '鹿', '麦', '麻', '黃', '黄', '黎', '齐', '龔', '龙', '龚',
];

/// Characters that end a given name: particles, pronouns, and the first
/// characters of the fields that follow a name in forms. Sorted, for
/// binary search.
const STOP: [char; 81] = [
    '与', '个', '为', '也', '了', '于', '今', '从', '他', '们', '份', '住', '你', '先', '别', '到',
    '区', '去', '县', '又', '及', '反', '号', '名', '向', '吗', '吧', '呢', '和', '啊', '在', '地',
    '址', '士', '女', '她', '姓', '它', '对', '将', '就', '岁', '已', '市', '年', '性', '您', '我',
    '手', '把', '是', '有', '机', '来', '生', '电', '男', '的', '省', '码', '称', '等', '箱', '系',
    '给', '联', '街', '被', '让', '证', '话', '说', '请', '路', '身', '还', '这', '那', '邮', '都',
    '龄',
];

/// Labels after which a name is likely but not certain (`我是` is also
/// followed by jobs and places).
const WEAK_LABELS: [&str; 25] = [
    "我是",
    "本人",
    "患者",
    "乘客",
    "业主",
    "客户",
    "他叫",
    "她叫",
    "用户：",
    "用户:",
    "市民",
    "母亲",
    "父亲",
    "儿子",
    "女儿",
    "家老人",
    "同事",
    "邻居",
    "朋友",
    "爱人",
    "我爱人",
    "妻子",
    "丈夫",
    "I am",
    "This is",
];

/// Ordinary words that begin with a surname character; after a weak cue,
/// or before an honorific, a run starting with one of them is no name.
/// Words that are common names too (高峰, 汪洋, 黄金) are left out: a cue
/// makes them names.
const NOT_NAMES: [&str; 120] = [
    "明白", "明天", "明确", "明显", "明年", "明细", "高兴", "高级", "高速", "高度", "高中", "高校",
    "高新", "陈列", "陈述", "林业", "林地", "金额", "金融", "方便", "方式", "方法", "方面", "方案",
    "方向", "关于", "关注", "关系", "关键", "安排", "安全", "安装", "安置", "常见", "常用", "常住",
    "周末", "周边", "周期", "成功", "成本", "成为", "成立", "成员", "成绩", "白天", "马上", "车辆",
    "车位", "程序", "任何", "任务", "许可", "谢谢", "华为", "万一", "管理", "管道", "邮件", "邮寄",
    "田地", "石材", "时间", "温度", "温馨", "康复", "严重", "严格", "叶子", "余额", "包括", "包装",
    "宁可", "尚未", "季度", "单位", "单独", "单元", "曲线", "路口", "路段", "路线", "连续", "连接",
    "熊猫", "秦朝", "江边", "苏醒", "鲁莽", "龙头", "毛病", "景区", "景点", "费用", "卫生", "米饭",
    "宗教", "全部", "全面", "应该", "应当", "师傅", "易于", "齐全", "左右", "柏油", "查询", "查看",
    "燕麦", "冷静", "冷气", "席位", "简单", "简称", "车主", "向法", "高一", "高二", "高三", "方可",
];

/// Common words whose second character is a surname, which an honorific
/// right after would otherwise make a name of (`历史老师`, `值班医生`,
/// `维修师傅`, `我们班主任`).
const WORD_ENDS: [&str; 14] = [
    "历史", "值班", "上班", "下班", "加班", "们班", "本班", "同班", "维修", "检修", "装修", "进修",
    "翻修", "自修",
];

/// Middle-dot look-alikes joining the parts of a minority name.
const DOTS: [char; 5] = ['·', '・', '•', '‧', '･'];

/// The longest minority name read, in characters.
const MAX_DOTTED: usize = 24;

/// The longest part of a minority name between dots, in characters
/// (transliterated parts run to 6: `阿卜杜热合曼`).
const MAX_DOTTED_PART: usize = 8;

/// Words that end a minority name's part once it has two characters: what
/// follows a name in a sentence (`阿依古丽·买买提今天上午来电`), which a part
/// would otherwise run on into, since its characters are transliterations
/// a stop list cannot tell from a name's (`努尔别克` holds `别`).
const DOTTED_ENDS: [&str; 20] = [
    "今天", "昨天", "明天", "前天", "后天", "上午", "下午", "中午", "晚上", "早上", "来电", "来访",
    "来信", "反映", "投诉", "咨询", "申请", "办理", "先生", "女士",
];

fn is_surname(c: char) -> bool {
    SURNAMES.binary_search(&c).is_ok()
}

fn is_stop(c: char) -> bool {
    STOP.binary_search(&c).is_ok()
}

fn given_char(c: char) -> bool {
    is_han(c) && !is_stop(c)
}

/// The surname at the start of `chars`, in characters (2 for a compound).
fn surname_len(chars: &[char]) -> Option<usize> {
    if let [a, b, ..] = chars {
        let mut buf = [0u8; 8];
        let la = a.encode_utf8(&mut buf).len();
        let lb = b.encode_utf8(buf.get_mut(la..).unwrap_or_default()).len();
        let pair = std::str::from_utf8(buf.get(..la + lb).unwrap_or_default()).unwrap_or("");
        if COMPOUND_SURNAMES.contains(&pair) {
            return Some(2);
        }
    }
    chars.first().filter(|&&c| is_surname(c)).map(|_| 1)
}

/// Whether `run` begins with one of [`NOT_NAMES`].
fn starts_with_word(run: &[char]) -> bool {
    match run {
        [a, b, ..] => NOT_NAMES.iter().any(|w| {
            let mut it = w.chars();
            it.next() == Some(*a) && it.next() == Some(*b)
        }),
        _ => false,
    }
}

fn byte_len(chars: &[char]) -> usize {
    chars.iter().map(|c| c.len_utf8()).sum()
}

/// Finds the names next to every name cue.
pub(super) fn find(text: &str, hits: &[Hit], out: &mut Vec<Candidate>) {
    for (k, h) in hits.iter().enumerate() {
        let prev_end = k
            .checked_sub(1)
            .and_then(|p| hits.get(p))
            .map_or(0, |p| p.end);
        let next_start = hits.get(k + 1).map_or(text.len(), |n| n.start);
        match h.cue {
            Cue::NameBefore => after_label(text, h, next_start, out),
            Cue::NameAfter => before_honorific(text, h.start, prev_end, out),
            _ => {}
        }
    }
}

/// A name right after a label, up to the next cue at `limit`.
fn after_label(text: &str, h: &Hit, limit: usize, out: &mut Vec<Candidate>) {
    let label = text.get(h.start..h.end).unwrap_or_default();
    let weak = WEAK_LABELS.contains(&label);
    let Some(rest) = text.get(h.end..limit.max(h.end)) else {
        return;
    };
    // Skip the label's colon, spaces and a linking verb.
    let mut start = h.end;
    let mut it = rest.char_indices().peekable();
    let mut skipped = 0;
    while let Some(&(_, c)) = it.peek() {
        // Any space but a line break, and invisible characters, as the
        // name normalizer drops them.
        let blank = (c.is_whitespace()
            && !matches!(
                c,
                '\n' | '\r' | '\u{0B}' | '\u{0C}' | '\u{85}' | '\u{2028}' | '\u{2029}'
            ))
            || crate::classes::is_invisible(c);
        if skipped < 4 && (blank || matches!(c, ':' | '：' | '|' | '｜' | '│' | '为' | '是' | '叫'))
        {
            start += c.len_utf8();
            skipped += 1;
            it.next();
        } else {
            break;
        }
    }
    let rest = rest.get(start - h.end..).unwrap_or_default();
    // A word, not a name, after any label but one that says a name
    // follows (`姓名：高峰`, `我叫叶子`: names whatever the dictionary says).
    let says_name = label.contains('名') || label.contains('叫');
    // At most a compound surname, two given characters and one more to see
    // whether the name stops there; after a name field, single spaces
    // between its characters (`姓名：张 三`, as forms and OCR space them)
    // are part of it. `ends[k]`: where character `k` ends in `rest`.
    let mut run = [' '; 5];
    let mut ends = [0usize; 5];
    let mut n = 0;
    let mut chars = rest.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        // Invisible characters inside a name (`陈\u{200B}明`) are read
        // through, as normalization drops them.
        if n > 0 && crate::classes::is_invisible(c) {
            continue;
        }
        if n > 0
            && says_name
            && c.is_whitespace()
            && !matches!(
                c,
                '\n' | '\r' | '\u{0B}' | '\u{0C}' | '\u{85}' | '\u{2028}' | '\u{2029}'
            )
        {
            if chars.peek().is_some_and(|&(_, d)| is_han(d) && !is_stop(d)) {
                continue;
            }
            break;
        }
        if n == run.len() || !is_han(c) || (n > 0 && is_stop(c)) {
            break;
        }
        if let (Some(slot), Some(e)) = (run.get_mut(n), ends.get_mut(n)) {
            *slot = c;
            *e = at + c.len_utf8();
            n += 1;
        }
    }
    let run = run.get(..n).unwrap_or_default();
    if let Some(c) = dotted(rest, start) {
        out.push(c);
        return;
    }
    if (weak || !says_name) && starts_with_word(run) {
        return;
    }
    let (len, confidence) = match surname_len(run) {
        Some(s) => {
            let given = (n - s).min(2);
            if given == 0 {
                return;
            }
            // Whether the name ends at a stop rather than being cut short.
            let clean = n == s + given;
            let confidence = match (weak, clean) {
                (false, true) => 0.92,
                (false, false) => 0.75,
                (true, true) => 0.8,
                (true, false) => 0.45,
            };
            (s + given, confidence)
        }
        // A rare surname: a form's name field and a clean 2-3 character run.
        None if label.contains('名') && (2..=3).contains(&n) => (n, 0.6),
        None => return,
    };
    let end = start
        + len
            .checked_sub(1)
            .and_then(|k| ends.get(k))
            .copied()
            .unwrap_or(0);
    out.push(Candidate {
        class: Class::Name,
        start,
        end,
        confidence,
        validated: false,
    });
}

/// A minority name (`阿依古丽·买买提`) at the start of `rest`, which begins
/// at byte `start`: Han runs joined by middle dots, at least one dot.
fn dotted(rest: &str, start: usize) -> Option<Candidate> {
    let mut end = 0;
    let mut dots = 0;
    let mut last_han = false;
    let mut part = 0;
    for (i, c) in rest.char_indices().take(MAX_DOTTED) {
        let ends_part = part >= 2
            && rest
                .get(i..)
                .is_some_and(|r| DOTTED_ENDS.iter().any(|w| r.starts_with(w)));
        if is_han(c) && (last_han || !is_stop(c)) && part < MAX_DOTTED_PART && !ends_part {
            last_han = true;
            part += 1;
            end = i + c.len_utf8();
        } else if DOTS.contains(&c) && last_han {
            last_han = false;
            part = 0;
            dots += 1;
        } else {
            break;
        }
    }
    (dots > 0 && last_han).then_some(Candidate {
        class: Class::Name,
        start,
        end: start + end,
        confidence: 0.85,
        validated: false,
    })
}

/// A name right before an honorific at byte `at`, not reaching back past
/// the previous cue at `floor`.
fn before_honorific(text: &str, at: usize, floor: usize, out: &mut Vec<Candidate>) {
    let Some(before) = text.get(floor.min(at)..at) else {
        return;
    };
    // Up to five characters back, nearest last.
    let mut back = [' '; 5];
    let mut n = 0;
    for c in before.chars().rev().take(5) {
        if let Some(slot) = back.get_mut(n) {
            *slot = c;
            n += 1;
        }
    }
    let mut chars = [' '; 5];
    for (dst, src) in chars
        .iter_mut()
        .zip(back.get(..n).unwrap_or_default().iter().rev())
    {
        *dst = *src;
    }
    let chars = chars.get(..n).unwrap_or_default();
    // Options: the name is the last `len` characters.
    let mut best: Option<(usize, bool)> = None;
    for len in 1..=4.min(n) {
        let from = n - len;
        let name = chars.get(from..).unwrap_or_default();
        let Some(s) = surname_len(name) else { continue };
        if starts_with_word(name) {
            continue;
        }
        let given = name.get(s..).unwrap_or_default();
        if given.len() > 2 || !given.iter().all(|&c| given_char(c)) {
            continue;
        }
        let bounded = match from.checked_sub(1).and_then(|p| chars.get(p)) {
            None => true,
            Some(&c) => !is_han(c) || is_stop(c),
        };
        // The longest bounded option, else the shortest.
        best = match best {
            None => Some((len, bounded)),
            Some((_, false)) if bounded => Some((len, bounded)),
            Some((l, true)) if bounded => Some((len.max(l), true)),
            keep => keep,
        };
    }
    let Some((len, bounded)) = best else { return };
    let name = chars.get(n - len..).unwrap_or_default();
    let only_surname = surname_len(name) == Some(len);
    // A lone surname that ends a common word (`历史老师`) is that word.
    if only_surname {
        let pair: String = (n - len)
            .checked_sub(1)
            .and_then(|from| chars.get(from..n))
            .unwrap_or_default()
            .iter()
            .collect();
        if WORD_ENDS.contains(&pair.as_str()) {
            return;
        }
    }
    let confidence = match (bounded, only_surname) {
        (true, false) => 0.88,
        (false, false) => 0.7,
        (true, true) => 0.7,
        (false, true) => 0.55,
    };
    out.push(Candidate {
        class: Class::Name,
        start: at - byte_len(name),
        end: at,
        confidence,
        validated: false,
    });
}
