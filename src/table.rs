//! Plain text tables for people: columns padded to the widest cell.

/// Renders rows (the first is the header) with two spaces between columns.
/// Rows are arrays, or vectors when the columns depend on the request
/// (then all as long as the header).
pub fn render<R: AsRef<[String]>>(rows: &[R]) -> String {
    let columns = rows.first().map_or(0, |r| r.as_ref().len());
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row.as_ref()) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.as_ref().iter().enumerate() {
            if i + 1 == columns {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up() {
        let rows = [["A".to_owned(), "BB".into()], ["ccc".into(), "d".into()]];
        assert_eq!(super::render(&rows), "A    BB\nccc  d\n");
    }
}
