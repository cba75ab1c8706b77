"""The Great Expectations suite every raw record must pass before it may be trained on.

Rules that need more than one cell (token length of the formatted example, duplicates) read
feature columns computed beforehand by `validated_records`: `n_tokens` and `duplicate_of`.
Each expectation's `meta["rule"]` is the wording a user sees beside a rejected row.
"""


def record_suite(max_tokens: int, name: str = "records"):
    import great_expectations as gx
    import great_expectations.expectations as gxe

    expectations = []
    for column in ("instruction", "output"):
        expectations.append(
            gxe.ExpectColumnValuesToNotBeNull(column=column, meta={"rule": f"{column} is missing"})
        )
        expectations.append(
            gxe.ExpectColumnValuesToNotMatchRegex(
                column=column, regex=r"^\s*$", meta={"rule": f"{column} is blank"}
            )
        )
    expectations.append(
        gxe.ExpectColumnValuesToBeBetween(
            column="n_tokens",
            max_value=max_tokens,
            meta={"rule": f"formatted example is longer than max_tokens={max_tokens}"},
        )
    )
    expectations.append(
        gxe.ExpectColumnValuesToBeNull(
            column="duplicate_of", meta={"rule": "duplicate (case/whitespace-insensitive) of an earlier row"}
        )
    )
    # Built unbound (expectations passed to the constructor): the resource adds it to its context.
    return gx.ExpectationSuite(name=name, expectations=expectations)
