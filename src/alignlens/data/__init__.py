"""Tasks, languages, items and prompts.

A *task* is a folder with a `task.json` spec and one `<lang>.jsonl` (or `.jsonl.gz`) file of
items per language. The three tasks of the paper (`emotion`, `snli`, `paws`) are bundled in
`alignlens/resources/data`; users add their own by passing a folder path wherever a task name
is accepted.

task.json keys: `labels` (English label words), `fields` (text fields of an item; every query
template must use each of them), `shots` (optional, informational), `ignored_fields` (optional:
item keys that are kept out of the prompts, e.g. ids), `max_field_chars` (optional, default
`MAX_FIELD_CHARS`: the longest item field accepted, in characters), and `languages`: {lang:
{"demonstrations", "query_template", "label_words" (optional: English label -> word in that
language, for the logit lens; if given, not empty and no word twice)}}. Every language listed
needs exactly one item file (`<lang>.jsonl` or `<lang>.jsonl.gz`, not both). The query template
uses `{field}` placeholders (`{{`/`}}` for literal braces) and ends where the answer's first token
follows; demonstrations are literal text.

Everything is checked when loaded (`load_task`, `load_items`; `validate_tasks` for a whole run,
before any model loads): each problem is one AlignlensError line naming file, line, field and,
where they apply, task, language and label.

Item lines: {"index": int (optional, defaults to the line number), "label": English label
(required in the reference file; elsewhere optional, and if given equal to the reference's),
<field>: str, ...}; no other keys except `ignored_fields`. Test sets are parallel across
languages: the *reference* file is the English one (else the first language in paper order);
gold labels come from it for every language, and every language's file must list the same item
indices in the same order (so `--limit`, `--items` and the means over languages cover the same
items everywhere).

Prompt (paper): `demonstrations + "\\n" + query_template.format(**item)`; the answer is scored on
the next token. The logit lens's target-label prompts (`target_label_prompt_prefix`) are the same with
each quoted English label word in the demonstrations replaced by the language's `label_words` word.

Modules: `tasks` (task specs, items, the checks of a run's tasks and languages), `prompts` (the
paper's prompts, the lens's target-label prompts, the irrelevant-label variant), `pairs`
(question-translation training pairs). Every public name is re-exported here: use `data.<name>`.
"""

from alignlens.data.pairs import (QT_LANGUAGES, TranslationPair, default_train_items, english_copies,
                                  load_question_translation, load_task_question_translation, load_translation_file,
                                  task_query, translation_instruction)
from alignlens.data.prompts import (PAPER_IRRELEVANT_WORDS, build_prompt, irrelevant_label_spec, label_word_collisions,
                                    prompt_prefix, relabel_items, target_label_demonstrations,
                                    target_label_prompt_prefix, target_label_spec, target_label_words)
from alignlens.data.tasks import (BUNDLED_TASKS, MAX_FIELD_CHARS, Item, LanguagePrompt, TaskSpec, _read_items,  # tests clear its cache
                                  check_languages, data_root, iter_json_objects, json_error, list_tasks, load_items,
                                  load_task, task_languages, template_problem, validate_tasks)

__all__ = [
    # tasks
    "BUNDLED_TASKS", "MAX_FIELD_CHARS", "LanguagePrompt", "TaskSpec", "Item", "data_root", "list_tasks", "load_task",
    "load_items", "iter_json_objects", "json_error", "template_problem", "check_languages", "task_languages",
    "validate_tasks",
    # prompts
    "build_prompt", "prompt_prefix", "target_label_words", "label_word_collisions", "target_label_demonstrations",
    "target_label_prompt_prefix", "target_label_spec", "PAPER_IRRELEVANT_WORDS", "irrelevant_label_spec",
    "relabel_items",
    # pairs
    "QT_LANGUAGES", "TranslationPair", "translation_instruction", "load_question_translation", "task_query",
    "default_train_items", "load_task_question_translation", "english_copies", "load_translation_file",
]  # fmt: skip
