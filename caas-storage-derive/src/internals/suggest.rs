//! "Did you mean ...?" hints, by edit distance.

/// The candidate closest to `unknown`, if it is close enough to be a likely typo.
pub fn closest<'a, I>(unknown: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let limit = (unknown.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(unknown, c), c))
        .filter(|&(d, c)| d <= limit && c != unknown)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// `"; did you mean `x`?"` when there is a close candidate, else `""`.
pub fn did_you_mean<'a, I>(unknown: &str, candidates: I) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    closest(unknown, candidates)
        .map(|c| format!("; did you mean `{c}`?"))
        .unwrap_or_default()
}

/// Levenshtein distance, counting an adjacent swap as one edit.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j]: distance between a[..i] and b[..j]; three rows suffice for transpositions.
    let width = b.len() + 1;
    let mut before: Vec<usize> = vec![0; width];
    let mut prev: Vec<usize> = (0..width).collect();
    let mut cur: Vec<usize> = vec![0; width];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(before[j - 2] + 1);
            }
            cur[j] = d;
        }
        std::mem::swap(&mut before, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("collection", "collection"), 0);
        assert_eq!(edit_distance("colection", "collection"), 1);
        assert_eq!(edit_distance("databsae", "database"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn suggestions() {
        let keys = ["database", "collection", "consistency"];
        assert_eq!(closest("colection", keys), Some("collection"));
        assert_eq!(closest("consistancy", keys), Some("consistency"));
        assert_eq!(closest("frobnicate", keys), None);
        assert_eq!(did_you_mean("databse", keys), "; did you mean `database`?");
        assert_eq!(did_you_mean("zzz", keys), "");
    }
}
