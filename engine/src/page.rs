//! Pages of sorted listings (tags, the catalog): up to `n` items after a cursor, and whether
//! more follow.

/// One page of a listing sorted by bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items, in order.
    pub items: Vec<T>,
    /// Whether more items follow the last one.
    pub more: bool,
}

impl<T> Page<T> {
    /// The last item when more follow: where the next page starts.
    pub fn next_after(&self) -> Option<&T> {
        self.items.last().filter(|_| self.more)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_page_starts_after_the_last_item_only_when_more_follow() {
        let p = Page {
            items: vec![1, 2],
            more: true,
        };
        assert_eq!(p.next_after(), Some(&2));
        let p = Page {
            items: vec![1, 2],
            more: false,
        };
        assert_eq!(p.next_after(), None);
        let p: Page<u8> = Page {
            items: vec![],
            more: true,
        };
        assert_eq!(p.next_after(), None);
    }
}
