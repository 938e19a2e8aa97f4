//! Query answers that carry their completeness in their type.

use raftmetrics_types::Coverage;
use raftmetrics_types::QueryResult;
use raftmetrics_types::api::AnalyticsResponse;

use crate::error::Error;

/// The answer to a query: either built from every partition, or partial.
///
/// A cluster answers from the partitions it can reach within its deadline; when every replica
/// of some partition is down, the answer covers only the rest ([`Coverage`] says which
/// partitions are missing). The two cases are distinct variants so that partiality cannot go
/// unnoticed: take the value with [`Answer::into_complete`] (partial answers become
/// [`Error::Partial`]), or accept either explicitly with [`Answer::into_value`] /
/// [`Answer::value`] after looking at [`Answer::is_partial`].
///
/// To have the server refuse partial answers instead, send the query with
/// `allow_partial = false`; it then answers `503 RAFT_ERROR`.
#[derive(Clone, Debug, PartialEq)]
#[must_use = "an answer may be partial; check it or call into_complete()"]
pub enum Answer<T> {
    /// Every partition answered.
    Complete(T),
    /// Some partitions did not answer: `value` is computed from the others only.
    Partial { value: T, coverage: Coverage },
}

impl<T> Answer<T> {
    /// A [`Answer::Partial`] when `coverage` says the answer is partial (flagged, or with
    /// missing partitions), else [`Answer::Complete`].
    pub fn new(value: T, coverage: Coverage) -> Self {
        if coverage.is_partial || !coverage.missing_partitions.is_empty() {
            Answer::Partial { value, coverage }
        } else {
            Answer::Complete(value)
        }
    }

    pub fn is_partial(&self) -> bool {
        matches!(self, Answer::Partial { .. })
    }

    pub fn is_complete(&self) -> bool {
        matches!(self, Answer::Complete(_))
    }

    /// The coverage of a partial answer; `None` when complete.
    pub fn partial_coverage(&self) -> Option<&Coverage> {
        match self {
            Answer::Complete(_) => None,
            Answer::Partial { coverage, .. } => Some(coverage),
        }
    }

    /// Partitions that did not answer (empty when complete).
    pub fn missing_partitions(&self) -> &[u32] {
        self.partial_coverage()
            .map_or(&[], |c| c.missing_partitions.as_slice())
    }

    /// The value, complete or partial.
    pub fn value(&self) -> &T {
        match self {
            Answer::Complete(value) | Answer::Partial { value, .. } => value,
        }
    }

    /// The value, accepting a partial one.
    pub fn into_value(self) -> T {
        match self {
            Answer::Complete(value) | Answer::Partial { value, .. } => value,
        }
    }

    /// The value and, when partial, its coverage.
    pub fn into_parts(self) -> (T, Option<Coverage>) {
        match self {
            Answer::Complete(value) => (value, None),
            Answer::Partial { value, coverage } => (value, Some(coverage)),
        }
    }

    /// The value of a complete answer; a partial one is [`Error::Partial`].
    pub fn into_complete(self) -> Result<T, Error> {
        match self {
            Answer::Complete(value) => Ok(value),
            Answer::Partial { coverage, .. } => Err(Error::Partial { coverage }),
        }
    }

    /// The same answer with `f` applied to its value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Answer<U> {
        match self {
            Answer::Complete(value) => Answer::Complete(f(value)),
            Answer::Partial { value, coverage } => Answer::Partial {
                value: f(value),
                coverage,
            },
        }
    }

    pub fn as_ref(&self) -> Answer<&T> {
        match self {
            Answer::Complete(value) => Answer::Complete(value),
            Answer::Partial { value, coverage } => Answer::Partial {
                value,
                coverage: coverage.clone(),
            },
        }
    }
}

impl From<QueryResult> for Answer<QueryResult> {
    fn from(result: QueryResult) -> Self {
        let coverage = result.coverage.clone();
        Answer::new(result, coverage)
    }
}

impl From<AnalyticsResponse> for Answer<AnalyticsResponse> {
    fn from(response: AnalyticsResponse) -> Self {
        let coverage = Coverage {
            is_partial: response.is_partial,
            total_nodes: response.total_nodes,
            responding_nodes: response.responding_nodes,
            missing_partitions: response.missing_partitions.clone(),
        };
        Answer::new(response, coverage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coverage(is_partial: bool, missing: Vec<u32>) -> Coverage {
        Coverage {
            is_partial,
            total_nodes: 3,
            responding_nodes: if is_partial { 2 } else { 3 },
            missing_partitions: missing,
        }
    }

    fn result(coverage: Coverage) -> QueryResult {
        QueryResult {
            metric: "cpu".into(),
            aggregations: Vec::new(),
            groups: Vec::new(),
            buckets: Vec::new(),
            percentiles: None,
            coverage,
        }
    }

    #[test]
    fn complete_answers_give_their_value() {
        let answer = Answer::from(result(coverage(false, vec![])));
        assert!(answer.is_complete() && !answer.is_partial());
        assert!(answer.partial_coverage().is_none());
        assert!(answer.missing_partitions().is_empty());
        assert_eq!(answer.value().metric, "cpu");
        assert_eq!(answer.clone().into_parts().1, None);
        assert_eq!(answer.into_complete().unwrap().metric, "cpu");
    }

    #[test]
    fn partial_answers_cannot_pass_as_complete() {
        let answer = Answer::from(result(coverage(true, vec![2, 5])));
        assert!(answer.is_partial());
        assert_eq!(answer.missing_partitions(), &[2, 5]);
        assert_eq!(answer.as_ref().map(|r| r.metric.len()).into_value(), 3);
        let err = answer.clone().into_complete().unwrap_err();
        assert!(err.is_partial());
        assert!(
            matches!(&err, Error::Partial { coverage } if coverage.missing_partitions == [2, 5])
        );
        assert_eq!(
            err.to_string(),
            "partial answer: 2 of 3 nodes responded, partitions [2, 5] missing"
        );
        // Still usable when the caller accepts partial answers.
        assert_eq!(answer.into_value().metric, "cpu");
        // Missing partitions make an answer partial even without the flag.
        assert!(Answer::from(result(coverage(false, vec![1]))).is_partial());
    }

    #[test]
    fn analytics_coverage_comes_from_its_fields() {
        let response = AnalyticsResponse {
            metric: "value".into(),
            average: Some(1.5),
            count: 2,
            is_partial: true,
            total_nodes: 3,
            responding_nodes: 2,
            missing_partitions: vec![7],
        };
        let answer = Answer::from(response.clone());
        assert_eq!(answer.partial_coverage(), Some(&coverage(true, vec![7])));
        let complete = AnalyticsResponse {
            is_partial: false,
            responding_nodes: 3,
            missing_partitions: vec![],
            ..response
        };
        assert_eq!(Answer::from(complete.clone()), Answer::Complete(complete));
    }
}
