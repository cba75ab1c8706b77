"""The Great Expectations suite every raw record must pass before it may be trained on.

The rules read feature columns that `validated_records` computes per row (what is missing, what is
wrong with the chat structure or the text, the token length of the formatted example, which earlier
row it duplicates); Great Expectations decides which rows break which rule and keeps the record.
Each expectation's `meta["rule"]` is the wording a user sees beside a rejected row, followed by the
row's value in that column.
"""

# column -> rule wording; a row breaks the rule when the column is not null
NULL_RULES = {
    "missing_fields": "required field missing or blank",
    "structure_error": "chat structure broken",
    "hygiene_error": "text hygiene",
    "duplicate_of": "duplicate of an earlier row",
}


def too_long_rule(max_tokens: int) -> str:
    return f"formatted example is longer than max_tokens={max_tokens}"


def record_suite(max_tokens: int, name: str = "records"):
    import great_expectations as gx
    import great_expectations.expectations as gxe

    expectations = [
        gxe.ExpectColumnValuesToBeNull(column=column, meta={"rule": rule}) for column, rule in NULL_RULES.items()
    ]
    expectations.insert(
        3,
        gxe.ExpectColumnValuesToBeBetween(
            column="n_tokens", max_value=max_tokens, meta={"rule": too_long_rule(max_tokens)}
        ),
    )
    # Built unbound (expectations passed to the constructor): the resource adds it to its context.
    return gx.ExpectationSuite(name=name, expectations=expectations)
