"""Pictures and text for TensorBoard, written with TensorFlow's summary writer.

Keras' own `keras.callbacks.TensorBoard` writes through `tf.summary` on every
backend; so does this module, importing TensorFlow only when a callback is
asked to log pictures.
"""


class SummaryWriter:
    """Writes images and Markdown text to a TensorBoard log directory.

    Args:
        log_dir: the directory (the one `keras.callbacks.TensorBoard` writes to
            works: TensorBoard shows both).
    """

    def __init__(self, log_dir):
        try:
            import tensorflow as tf
        except ImportError as error:
            raise ImportError("Logging to TensorBoard needs TensorFlow's summary writer: "
                              "pip install tensorflow (as Keras' TensorBoard callback does).") from error
        self._tf = tf
        self._writer = tf.summary.create_file_writer(str(log_dir))

    def image(self, tag, image, step):
        """Logs one `(height, width, channels)` uint8 image."""
        with self._writer.as_default():
            self._tf.summary.image(tag, image[None], step=step)
        self._writer.flush()

    def text(self, tag, text, step):
        """Logs Markdown text."""
        with self._writer.as_default():
            self._tf.summary.text(tag, text, step=step)
        self._writer.flush()
