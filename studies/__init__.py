"""The bundled study files (`alignlens study run quick`, `alignlens study run paper`): shipped as the
package data of `alignlens.studies`; see `alignlens.study.spec.bundled_studies`."""
